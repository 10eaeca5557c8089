"""Every argument takes a ``pulumi.Input``: Outputs of other resources and secret Outputs reach
the resources and the rendered files; bad values known only at deployment fail the deployment
with the literal's message; arguments that decide which resources exist refuse an Output.

Under Pulumi mocks: the other resources' outputs are known once the mock engine has "created"
them, so the component sees Outputs (not plain values) and takes the path a real deployment
takes; a preview's unknown values are not exercised.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, cast

import pulumi
import pulumi_aws as aws
import pytest

from cmc_relay.components import TYPE_TOKEN, RelayHost, RelayHostArgs
from cmc_relay.components.arguments import CONFIG_KEYS
from cmc_relay.components.verification import QUEUE_DISCARDED
from cmc_relay.userdata.settings import ConfigError
from tests.pulumi_harness import (
    ACCOUNT,
    KMS_KEY_ID,
    REGION,
    Recorder,
    Registered,
    bundle_of,
    is_secret,
    revealed,
    run_program,
)

SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:cmc/api-AbCdEf"
CERT_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:cmc/inbound-tls-GhIjKl"
KMS_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KMS_KEY_ID}"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVlcmlmaWNhdGlvbi10ZXN0LWtleQ deployer@ci"
API_KEY = "api-key-marker-Zq81"  # distinctive, so a leak anywhere is found
INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
BASE: dict[str, Any] = {
    "vpc_id": "vpc-team",
    "subnet_id": "subnet-team",
    "allowed_cidrs": ["10.20.0.0/16"],
    "credentials_secret_arn": SECRET_ARN,
}


def relay(args: dict[str, Any]) -> RelayHost:
    return RelayHost("relay", cast(RelayHostArgs, {k: v for k, v in args.items() if v is not None}))


def user_data(recorder: Recorder) -> str:
    """The host's user data and every file of its bundle, as one text."""
    import base64
    import gzip

    packed = revealed(recorder.one(INSTANCE).inputs["userDataBase64"])
    files = bundle_of_revealed(recorder).values()
    return "\n".join([gzip.decompress(base64.b64decode(packed)).decode(), *files])


def component_outputs(recorder: Recorder) -> dict[str, Any]:
    return revealed(recorder.outputs[recorder.one(TYPE_TOKEN).urn])


def ingress_networks(recorder: Recorder, port: int) -> set[str]:
    rules = [revealed(r.inputs) for r in recorder.of_type(INGRESS)]
    return {
        rule.get("cidrIpv4") or rule.get("cidrIpv6")
        for rule in rules
        if rule["fromPort"] == port and "referencedSecurityGroupId" not in rule
    }


# A value for each alarm threshold argument, none of them the default.
THRESHOLDS: dict[str, int] = {
    "alarm_deferred_threshold": 150,
    "alarm_oldest_message_minutes": 45,
    "alarm_bounced_threshold": 2,
    "alarm_refused_threshold": 7,
    "alarm_queue_free_percent": 25,
    "alarm_reboot_required_days": 2,
    "alarm_sent_threshold": 4000,
}


def assert_alarms_take(recorder: Recorder, namespace: str) -> None:
    """Each host alarm has THRESHOLDS' value (in the alarm's unit), says it, and watches
    ``namespace``."""
    alarms = {r.name: revealed(r.inputs) for r in recorder.of_type(ALARM)}
    expected = {  # alarm -> (threshold, evaluation periods, what its description says)
        "relay-deferred-alarm": (150, 10, "More than 150 messages"),
        "relay-oldest-message-alarm": (45 * 60, 1, "more than 45 minutes"),
        "relay-bounced-alarm": (2, 1, "2 or more messages bounced"),
        "relay-refused-alarm": (7, 1, "refused 7 or more"),
        "relay-queue-disk-alarm": (25, 5, "Less than 25%"),
        "relay-reboot-required-alarm": (1, 2 * 24, "2 days"),
        "relay-sent-alarm": (4000, 1, "More than 4000 messages"),
    }
    for name, (threshold, periods, said) in expected.items():
        alarm = alarms[name]
        assert (alarm["threshold"], alarm["evaluationPeriods"]) == (threshold, periods), name
        assert said in alarm["alarmDescription"] and alarm["namespace"] == namespace, name


def later(anchor: pulumi.Output[Any], value: Any) -> pulumi.Output[Any]:
    """``value``, known only once ``anchor``'s resource exists (at deployment)."""
    return anchor.apply(lambda _: value)


def test_outputs_of_other_resources_reach_the_resources_and_the_payload() -> None:
    """A string, int, bool, list, map and secret of every argument that takes them, each an
    Output of another resource (a VPC, a KMS key, an Elastic IP)."""

    def program() -> None:
        vpc = aws.ec2.Vpc("team", cidr_block="10.30.0.0/16")
        key = aws.kms.Key("relay")
        office = aws.ec2.Eip("office")  # the first Eip: 203.0.113.25
        relay(
            {
                "vpc_id": vpc.id,
                "subnet_id": later(vpc.id, "subnet-team"),
                "allowed_cidrs": [vpc.cidr_block, "10.40.0.0/16"],
                "allowed_security_group_ids": [later(vpc.id, "sg-app")],
                "api_user": later(vpc.id, "cmc-user"),
                "api_key": pulumi.Output.secret(API_KEY),
                "kms_key_arn": key.arn,
                "instance_type": "t4g.small",
                "max_connections": later(vpc.id, 7),
                "message_size_limit": later(vpc.id, 2_048_000),
                "host_name": later(vpc.id, "relay.team.example"),
                "secret_refresh_minutes": later(vpc.id, 11),
                "tls_level": later(vpc.id, "secure"),
                "tags": {"team": later(vpc.id, "mail")},
                "ephemeral": later(vpc.id, True),
                "verification": "ssh",
                "ssh_public_key": later(vpc.id, PUBLIC_KEY),
                "ssh_private_key": pulumi.Output.secret("private-key-marker"),
                "ssh_allowed_cidrs": [office.public_ip.apply(lambda ip: f"{ip}/32")],
                "sender_domain": later(vpc.id, "example.com"),
                "rewrite_domains": later(vpc.id, ["corp.internal"]),
                "allowed_sender_domains": later(vpc.id, ["example.com", "example.org"]),
                "operator_email": later(vpc.id, "ops@example.net"),
                "inbound_tls": later(vpc.id, "encrypt"),
                "inbound_tls_secret_arn": later(vpc.id, CERT_ARN),
                "log_retention_days": later(vpc.id, 90),
                "log_kms_key_arn": key.arn,
                "alarm_email": later(vpc.id, "ops@example.net"),
                "queue_volume_gb": later(vpc.id, 25),
                "discard_queue_on_destroy": later(vpc.id, True),
                "keep_received_headers": later(vpc.id, True),
                "client_message_rate_limit": later(vpc.id, 321),
                "client_recipient_rate_limit": later(vpc.id, 654),
                "client_connection_limit": later(vpc.id, 17),
                "smtp_port": later(vpc.id, 2525),
                "metrics_namespace": later(vpc.id, "Team/Mail"),
                **{name: later(vpc.id, value) for name, value in THRESHOLDS.items()},
            },
        )

    recorder = run_program(program)
    assert revealed(recorder.one("aws:ebs/volume:Volume").inputs)["size"] == 25
    service_rule = revealed(recorder.by_name("relay-out-service").inputs)
    assert (service_rule["fromPort"], service_rule["toPort"]) == (2525, 2525)
    assert recorder.by_name("relay-out-service").aliases == ["relay-out-2525"]  # its old name
    assert_alarms_take(recorder, "Team/Mail")
    host_policy = json.loads(revealed(recorder.by_name("relay-monitoring").inputs["policy"]))
    assert "Team/Mail" in json.dumps(host_policy)
    board = json.loads(revealed(recorder.one(DASHBOARD).inputs["dashboardBody"]))
    assert {line[0] for w in board["widgets"] for line in w["properties"]["metrics"]} == {
        "Team/Mail"
    }
    guard = revealed(recorder.by_name("relay-queue-guard").inputs)
    assert guard["delete"] == f"echo {shlex.quote(QUEUE_DISCARDED)}"
    assert ingress_networks(recorder, 25) == {"10.30.0.0/16", "10.40.0.0/16"}
    assert ingress_networks(recorder, 22) == {"203.0.113.25/32"}
    referenced = [r.inputs.get("referencedSecurityGroupId") for r in recorder.of_type(INGRESS)]
    assert "sg-app" in referenced
    group = recorder.one("aws:ec2/securityGroup:SecurityGroup")
    assert group.inputs["vpcId"] == "team-id"
    secret = revealed(recorder.one("aws:secretsmanager/secret:Secret").inputs)
    assert (secret["kmsKeyId"], secret["recoveryWindowInDays"]) == (KMS_KEY_ARN, 0)
    version = recorder.one("aws:secretsmanager/secretVersion:SecretVersion").inputs
    assert is_secret(version["secretString"])
    credentials = {"username": "cmc-user", "password": API_KEY}
    assert json.loads(revealed(version["secretString"])) == credentials
    log_group = revealed(recorder.one("aws:cloudwatch/logGroup:LogGroup").inputs)
    assert (log_group["retentionInDays"], log_group["kmsKeyId"]) == (90, KMS_KEY_ARN)
    instance = revealed(recorder.one(INSTANCE).inputs)
    assert (instance["instanceType"], instance["subnetId"]) == ("t4g.small", "subnet-team")
    assert instance["tags"] == {"Name": "relay", "team": "mail"}
    (ami_lookup,) = recorder.invoked("aws:ec2/getAmi:getAmi")
    assert {"name": "architecture", "values": ["arm64"]} in ami_lookup.args["filters"]
    subscription = revealed(recorder.one("aws:sns/topicSubscription:TopicSubscription").inputs)
    assert subscription["endpoint"] == "ops@example.net"
    policy = revealed(recorder.by_name("relay-read-credentials").inputs["policy"])
    assert CERT_ARN in policy and KMS_KEY_ARN in policy
    text = user_data(recorder)
    for expected in (
        "10.30.0.0/16",
        "default_destination_concurrency_limit = 7",
        "message_size_limit = 2048000",
        "fqdn: relay.team.example",
        "smtp_tls_security_level = secure",
        "smtpd_tls_security_level = encrypt",
        PUBLIC_KEY,
        r"(.+\.)?corp\.internal)$/ ${1}@example.com",
        r"/@(example\.com|example\.org)$/ OK",
        "ops@example.net",
        f"CMC_INBOUND_TLS_SECRET_ARN={CERT_ARN}",
        "]:2525",  # the next hop
        '{"namespace":"Team/Mail"',  # the metrics publisher's configuration
        "OnUnitActiveSec=11min",
        "smtpd_client_message_rate_limit = 321",
        "smtpd_client_recipient_rate_limit = 654",
        "smtpd_client_connection_count_limit = 17",
    ):
        assert expected in text, expected
    assert "smtp_header_checks" not in text  # keep_received_headers
    assert API_KEY not in text and "private-key-marker" not in text


def test_outputs_reach_a_nat_fleet_with_ip_authentication() -> None:
    """The NAT gateway's address, the image, the topic, the drain's timeout and the service's
    host from other resources; the sending IPs and next hop the component reports."""

    def program() -> None:
        nat = aws.ec2.Eip("nat")  # 203.0.113.25
        topic = aws.sns.Topic("ops")
        relay(
            {
                **BASE,
                "credentials_secret_arn": None,
                "plan": "pro",
                "subdomain": later(nat.id, "acme"),
                "smtp_host": later(nat.id, "relay.example.net"),
                "auth_mode": "ip",
                "egress": "nat",
                "nat_gateway_ips": [nat.public_ip],
                "max_connections": later(nat.id, 40),
                "pro_max_sessions": later(nat.id, 40),
                "ami_id": later(nat.id, "ami-0123456789abcdef0"),
                "alarm_topic_arn": topic.arn,
                "drain_on_delete": True,
                "drain_timeout_seconds": later(nat.id, 900),
            },
        )

    recorder = run_program(program)
    assert recorder.of_type("aws:ec2/eip:Eip")[1:] == []  # egress nat: no Elastic IP of its own
    outputs = component_outputs(recorder)
    assert outputs["sending_ips"] == ["203.0.113.25"]
    assert outputs["smtp_relay_host"] == "[relay.example.net]:10025"
    assert recorder.one(INSTANCE).inputs["ami"] == "ami-0123456789abcdef0"
    topic_arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:ops-1a2b3c"
    alarms = recorder.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert any(topic_arn in alarm.inputs.get("alarmActions", []) for alarm in alarms)
    drain = recorder.by_name("relay-drain")
    assert "900" in drain.inputs["delete"]


def test_a_secret_output_of_every_kind_keeps_its_secrecy() -> None:
    """Secret strings, numbers, booleans, lists (and a list's element) and maps: the values
    arrive, and what they feed is stored as secrets (the user data too: Pulumi's secrecy
    follows the values; the user data itself never holds the API key)."""

    def program() -> None:
        secret = pulumi.Output.secret
        relay(
            {
                **BASE,
                "credentials_secret_arn": None,
                "allowed_cidrs": [secret("10.20.0.0/16")],
                "api_user": secret("cmc-user"),
                "api_key": secret(API_KEY),
                "kms_key_arn": secret(KMS_KEY_ARN),
                "max_connections": secret(6),
                "ephemeral": secret(True),
                "queue_volume_gb": secret(12),
                "client_connection_limit": secret(9),
                "rewrite_domains": secret(["corp.internal"]),
                "sender_domain": secret("example.com"),
                "tags": secret({"team": "mail"}),
                "alarm_sent_threshold": secret(4000),
                "smtp_port": secret(2525),
            },
        )

    recorder = run_program(program)
    sent = recorder.by_name("relay-sent-alarm").inputs
    assert is_secret(sent["threshold"]) and revealed(sent["threshold"]) == 4000
    service_rule = recorder.by_name("relay-out-service").inputs
    assert is_secret(service_rule["fromPort"]) and revealed(service_rule["fromPort"]) == 2525
    instance = recorder.one(INSTANCE).inputs
    assert is_secret(instance["userDataBase64"]) and is_secret(instance["tags"])
    assert revealed(instance["tags"]) == {"Name": "relay", "team": "mail"}
    secret = recorder.one("aws:secretsmanager/secret:Secret").inputs
    assert is_secret(secret["kmsKeyId"]) and revealed(secret["recoveryWindowInDays"]) == 0
    (rule,) = [r for r in recorder.of_type(INGRESS) if r.inputs["fromPort"] == 25]
    assert is_secret(rule.inputs["cidrIpv4"]) and revealed(rule.inputs["cidrIpv4"]) == (
        "10.20.0.0/16"
    )
    text = user_data(recorder)
    assert "default_destination_concurrency_limit = 6" in text
    assert "smtpd_client_connection_count_limit = 9" in text
    volume = recorder.one("aws:ebs/volume:Volume").inputs
    assert is_secret(volume["size"]) and revealed(volume["size"]) == 12
    assert r"(.+\.)?corp\.internal)$/ ${1}@example.com" in text
    assert API_KEY not in text
    assert bundle_of_revealed(recorder)


def bundle_of_revealed(recorder: Recorder) -> dict[str, str]:
    """The bundle, also when its content is stored as a secret."""
    objects = [
        Registered(r.type, r.name, revealed(r.inputs), r.parent, [], r.urn)
        for r in recorder.resources
        if r.type.endswith("BucketObjectv2")  # the bundle and its pointer
    ]
    return bundle_of(Recorder(resources=objects))


def config_error_of(error: BaseException) -> ConfigError:
    """The ConfigError a failed deployment wraps (Pulumi re-raises it around its inputs)."""
    seen: BaseException | None = error
    found = None
    while seen is not None:
        if isinstance(seen, ConfigError) and found is None:
            found = seen
        # Cut the chain as it is walked: Pulumi wraps the error once per waiting resource, and
        # freeing a chain that long at once upsets CPython 3.11's recursion accounting (a
        # later ast.parse, pytest's, fails with "AST constructor recursion depth mismatch").
        seen.__cause__, seen.__context__, seen.__traceback__, seen = (
            None, None, None, seen.__cause__ or seen.__context__,
        )  # fmt: skip
    assert found is not None, repr(error)
    return found


# (changes as literals, the argument whose value comes late): each a bad value, or a bad
# combination, that only the apply can see when that argument is an Output.
BAD = [
    ({"allowed_cidrs": ["0.0.0.0/0"]}, "allowed_cidrs"),
    ({"kms_key_arn": "arn:aws:kms:nope"}, "kms_key_arn"),
    ({"max_connections": 50}, "max_connections"),
    ({"ephemeral": "yes"}, "ephemeral"),
    ({"tags": {"team": "mail"}, "log_retention_days": 42}, "log_retention_days"),
    ({"sender_domain": "localhost"}, "sender_domain"),
    ({"rewrite_domains": ["corp.internal"]}, "rewrite_domains"),  # needs sender_domain
    ({"operator_email": "ops@example.net"}, "operator_email"),  # needs sender_domain
    ({"egress": "nat", "nat_gateway_ips": ["10.0.0.300"]}, "nat_gateway_ips"),
    (
        {"egress": "nat", "nat_gateway_ips": ["192.0.2.1"], "replicas": 2, "max_connections": 6},
        "max_connections",  # 2 hosts x 6 sessions behind one NAT address > 10 (G9)
    ),
    ({"alarm_email": "nobody"}, "alarm_email"),
    ({"alarm_topic_arn": "arn:aws:sqs:ap-northeast-1:123456789012:q"}, "alarm_topic_arn"),
    ({"credentials_secret_arn": "arn:aws:s3:::bucket/key"}, "credentials_secret_arn"),
    ({"inbound_tls": "none", "inbound_tls_secret_arn": CERT_ARN}, "inbound_tls"),
    ({"queue_volume_gb": 0}, "queue_volume_gb"),
    ({"discard_queue_on_destroy": "yes"}, "discard_queue_on_destroy"),
    ({"keep_received_headers": "no"}, "keep_received_headers"),
    ({"client_message_rate_limit": -1}, "client_message_rate_limit"),
    ({"client_recipient_rate_limit": 10**9}, "client_recipient_rate_limit"),
    ({"client_connection_limit": 500}, "client_connection_limit"),
    ({"smtp_port": 70000}, "smtp_port"),
    ({"smtp_port": 443}, "smtp_port"),  # open already, for HTTPS
    ({"metrics_namespace": "AWS/EC2"}, "metrics_namespace"),
    ({"alarm_queue_free_percent": 100}, "alarm_queue_free_percent"),
]


def with_late(changes: dict[str, Any], late: str, anchor: pulumi.Output[Any]) -> dict[str, Any]:
    args = {**BASE, **changes}
    if args.get("replicas", 1) > 1:
        args["subnet_ids"] = ["subnet-team", "subnet-team-b"]
    value = args[late]
    if late == "allowed_cidrs":  # a counted list: its elements are the Outputs
        args[late] = [later(anchor, item) for item in value]
    else:
        args[late] = later(anchor, value)
    return args


@pytest.mark.parametrize(("changes", "late"), BAD, ids=[late for _, late in BAD])
def test_a_bad_value_known_only_at_deployment_fails_it_with_the_literals_message(
    changes: dict[str, Any], late: str
) -> None:
    plain = {**BASE, **changes}
    if plain.get("replicas", 1) > 1:
        plain["subnet_ids"] = ["subnet-team", "subnet-team-b"]
    literal = Recorder()
    with pytest.raises(ConfigError) as refused:
        run_program(lambda: relay(plain), recorder=literal)
    assert literal.resources == []  # before any resource, as always

    deployed = Recorder()

    def program() -> None:
        vpc = aws.ec2.Vpc("team", cidr_block="10.30.0.0/16")
        relay(with_late(changes, late, vpc.id))

    with pytest.raises(Exception) as failed:
        run_program(program, recorder=deployed)
    error = config_error_of(failed.value)
    assert str(error) == str(refused.value)
    assert error.name in changes and CONFIG_KEYS[error.name] in str(error)  # the key named
    # Every resource takes its tags (if nothing else) from the checked values: none is created.
    assert {r.type for r in deployed.resources} == {"aws:ec2/vpc:Vpc", TYPE_TOKEN}


def test_networks_that_turn_out_the_same_fail_the_deployment() -> None:
    def program() -> None:
        vpc = aws.ec2.Vpc("team", cidr_block="10.30.0.0/16")
        relay({**BASE, "allowed_cidrs": [vpc.cidr_block, "10.30.0.0/16"]})

    with pytest.raises(Exception) as failed:
        run_program(program)
    error = config_error_of(failed.value)
    assert error.name == "allowed_cidrs"
    assert "lists the same network more than once (2 given, 1 different)" in str(error)


def test_known_values_are_still_checked_before_any_resource() -> None:
    """With other values still Outputs, a known bad value stops the program at once."""
    recorder = Recorder()

    def program() -> None:
        key = aws.kms.Key("relay")
        relay({**BASE, "kms_key_arn": key.arn, "allowed_cidrs": ["0.0.0.0/0"]})

    with pytest.raises(ConfigError, match=r"allowed_cidrs \(config allowedCidrs\): 0\.0\.0\.0/0"):
        run_program(program, recorder=recorder)
    assert [r.type for r in recorder.resources] == ["aws:kms/key:Key"]


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("replicas", 2, "it decides which resources the component creates"),
        ("verification", "none", "it decides which resources"),
        ("egress", "eip", "it decides which resources"),
        ("os", "debian-12", "package mirror rules"),
        ("plan", "standard", "it decides which resources"),
        ("alarms", False, "it decides which resources"),
    ],
)
def test_arguments_that_shape_the_resources_refuse_an_output(
    name: str, value: Any, why: str
) -> None:
    recorder = Recorder()

    def program() -> None:
        relay({**BASE, name: pulumi.Output.from_input(value)})

    with pytest.raises(
        ConfigError,
        match=f"must be a plain value known when the program runs, not an Output: .*{why}",
    ):
        run_program(program, recorder=recorder)
    assert recorder.resources == []


def test_a_counted_list_must_be_a_list_of_outputs_not_an_output_of_a_list() -> None:
    def program() -> None:
        relay({**BASE, "allowed_cidrs": pulumi.Output.from_input(["10.20.0.0/16"])})

    with pytest.raises(ConfigError, match=r"allowed_cidrs .*not an Output of a list: one security"):
        run_program(program)


def test_known_duplicate_networks_are_merged_while_other_values_are_outputs() -> None:
    """As with literals only: the same network twice is one rule (not a failed deployment)."""

    def program() -> None:
        key = aws.kms.Key("relay")
        relay({**BASE, "kms_key_arn": key.arn, "allowed_cidrs": ["10.20.0.0/16"] * 2})

    recorder = run_program(program)
    rules = [r for r in recorder.of_type(INGRESS) if r.inputs["fromPort"] == 25]
    assert [r.inputs["cidrIpv4"] for r in rules] == ["10.20.0.0/16"]
