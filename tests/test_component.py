"""The RelayHost component under Pulumi mocks: each promised property, on the registered inputs."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pulumi
import pytest
import yaml

from cmc_relay.components import TYPE_TOKEN, RelayHost
from cmc_relay.components.policies import ssm_agent_policy
from cmc_relay.components.relay_host import payload_bucket_prefix
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.settings import DEFAULT_OS, ConfigError
from tests.pulumi_harness import (
    CREATED_SECRET_ARN,
    LOOKED_UP_AMI,
    VERIFIER_REPORT,
    Recorder,
    bundle_of,
    driver_argv,
    is_secret,
    payload_of,
    run_program,
    stored_bundle,
    strings_in,
    user_data_of,
)

SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
KMS_KEY = "arn:aws:kms:ap-northeast-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
API_KEY = "api-key-marker-7Qx9"  # distinctive, so a leak anywhere is found

INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
READ_SECRETS = "relay-read-credentials"  # the other role policy is for monitoring


def relay(recorder: Recorder | None = None, **changes: Any) -> Recorder:
    args: dict[str, Any] = {
        "vpc_id": "vpc-team",
        "subnet_id": "subnet-team",
        "allowed_cidrs": ["10.20.0.0/16"],
        "credentials_secret_arn": SECRET_ARN,
        **changes,
    }
    present = {k: v for k, v in args.items() if v is not None}
    return run_program(lambda: RelayHost("relay", present), recorder=recorder)  # type: ignore[arg-type]


def user_data(recorder: Recorder) -> str:
    return user_data_of(recorder.one(INSTANCE))


def payload(recorder: Recorder) -> str:
    return payload_of(recorder, recorder.one(INSTANCE))


def test_component_type_token_and_children_named_and_parented() -> None:
    recorder = relay()
    component = recorder.one(TYPE_TOKEN)
    assert TYPE_TOKEN == "cmc-relay:index:RelayHost"
    children = [r for r in recorder.resources if r is not component]
    assert children
    for child in children:
        assert child.parent == component.urn, child.name
        assert child.name.startswith("relay-"), child.name


def test_security_group_admits_smtp_from_allowed_networks_only() -> None:
    recorder = relay(
        allowed_cidrs=["10.20.0.0/16", "fd00:20::/64"], allowed_security_group_ids=["sg-app"]
    )
    group = recorder.one("aws:ec2/securityGroup:SecurityGroup")
    assert group.inputs["vpcId"] == "vpc-team"
    assert "ingress" not in group.inputs and "egress" not in group.inputs  # rules are separate
    ingress = recorder.of_type(INGRESS)
    assert {(r.inputs["fromPort"], r.inputs["toPort"]) for r in ingress} == {(25, 25)}
    sources = {
        r.inputs.get("cidrIpv4")
        or r.inputs.get("cidrIpv6")
        or r.inputs["referencedSecurityGroupId"]
        for r in ingress
    }
    assert sources == {"10.20.0.0/16", "fd00:20::/64", "sg-app"}  # no SSH, nothing from the world


@pytest.mark.parametrize(
    ("os_name", "ports"),
    [
        ("al2023", {10025, 443}),
        ("debian-12", {10025, 443, 80}),
        ("debian-13", {10025, 443, 80}),
        ("ubuntu-24.04", {10025, 443, 80}),
    ],
)
def test_egress_only_where_the_host_needs_it(os_name: str, ports: set[int]) -> None:
    egress = relay(os=os_name).of_type(EGRESS)
    assert {r.inputs["fromPort"] for r in egress} == ports
    assert all(r.inputs["ipProtocol"] == "tcp" for r in egress)


@pytest.mark.parametrize("port", [10025, 2525])
def test_egress_follows_the_configured_service_port(port: int) -> None:
    recorder = relay(smtp_port=port)
    rule = recorder.by_name("relay-out-service")
    assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (port, port)
    assert rule.inputs["description"] == "the service's SMTP relay port"
    # Up to 0.2.0 the rule was named after its port: an existing stack keeps its rule.
    assert rule.aliases == [f"relay-out-{port}"]
    assert len(recorder.of_type(EGRESS)) == 1 + len(OS_PROFILES[DEFAULT_OS].package_ports)


def test_the_service_port_cannot_be_one_the_host_opens_anyway() -> None:
    with pytest.raises(ConfigError, match=r"smtp_port \(config smtpPort\): 443 is open already"):
        relay(smtp_port=443)


def test_role_can_use_ssm_and_read_exactly_the_one_secret() -> None:
    recorder = relay()
    trust = json.loads(recorder.one("aws:iam/role:Role").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert json.loads(recorder.by_name("relay-ssm-agent").inputs["policy"]) == ssm_agent_policy()
    policy = json.loads(recorder.by_name(READ_SECRETS).inputs["policy"])
    (statement,) = policy["Statement"]
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    assert statement["Resource"] == SECRET_ARN
    profile = recorder.one("aws:iam/instanceProfile:InstanceProfile")
    assert profile.inputs["role"] == "relay-role-7f3a2c1"
    assert recorder.one(INSTANCE).inputs["iamInstanceProfile"] == "relay-profile-7f3a2c1"


def test_customer_key_decrypts_only_through_secrets_manager() -> None:
    policy = json.loads(relay(kms_key_arn=KMS_KEY).by_name(READ_SECRETS).inputs["policy"])
    decrypt = next(s for s in policy["Statement"] if s["Action"] == "kms:Decrypt")
    assert decrypt["Resource"] == KMS_KEY
    assert decrypt["Condition"] == {
        "StringEquals": {"kms:ViaService": "secretsmanager.ap-northeast-1.amazonaws.com"}
    }
    assert all(s["Resource"] != "*" for s in policy["Statement"])


def test_no_kms_statement_without_a_customer_key() -> None:
    policy = json.loads(relay().by_name(READ_SECRETS).inputs["policy"])
    assert [s["Action"] for s in policy["Statement"]] == ["secretsmanager:GetSecretValue"]


def test_instance_is_hardened() -> None:
    inputs = relay().one(INSTANCE).inputs
    assert inputs["metadataOptions"] == {
        "httpEndpoint": "enabled",
        "httpTokens": "required",  # IMDSv2 only
        "httpPutResponseHopLimit": 1,
    }
    assert inputs["rootBlockDevice"] == {"volumeType": "gp3", "encrypted": True}
    assert "keyName" not in inputs  # no SSH key: Systems Manager instead
    assert inputs["userDataReplaceOnChange"] is True
    assert inputs["subnetId"] == "subnet-team"
    assert inputs["vpcSecurityGroupIds"] == ["relay-sg-id"]


def test_elastic_ip_is_separate_and_associated() -> None:
    recorder = relay()
    assert recorder.one("aws:ec2/eip:Eip").inputs["domain"] == "vpc"
    association = recorder.one("aws:ec2/eipAssociation:EipAssociation").inputs
    assert association == {"allocationId": "eipalloc-0abc", "instanceId": "relay-instance-id"}
    assert "instance" not in recorder.one("aws:ec2/eip:Eip").inputs


@pytest.mark.parametrize(
    ("os_name", "instance_type", "owner", "name", "architecture"),
    [
        ("debian-12", "m7g.large", "136693071363", "debian-12-arm64-*", "arm64"),
        ("debian-13", "m7g.large", "136693071363", "debian-13-arm64-*", "arm64"),
        ("debian-13", "t3.small", "136693071363", "debian-13-amd64-*", "x86_64"),
        ("al2023", "t4g.small", "amazon", "al2023-ami-2023.*-arm64", "arm64"),
        (
            "ubuntu-24.04",
            "t3.small",
            "099720109477",
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
            "x86_64",
        ),
    ],
)
def test_image_is_looked_up_for_the_os_and_architecture(
    os_name: str, instance_type: str, owner: str, name: str, architecture: str
) -> None:
    recorder = relay(os=os_name, instance_type=instance_type)
    (lookup,) = recorder.invoked("aws:ec2/getAmi:getAmi")
    assert lookup.args["owners"] == [owner]
    filters = {f["name"]: f["values"] for f in lookup.args["filters"]}
    assert filters["name"] == [name]
    assert filters["architecture"] == [architecture]
    assert recorder.one(INSTANCE).inputs["ami"] == LOOKED_UP_AMI


def test_default_os_is_debian_13() -> None:
    recorder = relay()
    (lookup,) = recorder.invoked("aws:ec2/getAmi:getAmi")
    filters = {f["name"]: f["values"] for f in lookup.args["filters"]}
    assert filters["name"] == ["debian-13-amd64-*"]
    assert "CMC_OS=debian-13" in payload(recorder)


def test_pinned_image_skips_the_lookup() -> None:
    recorder = relay(ami_id="ami-0123456789abcdef0")
    assert recorder.invoked("aws:ec2/getAmi:getAmi") == []
    assert recorder.one(INSTANCE).inputs["ami"] == "ami-0123456789abcdef0"


def test_user_data_carries_the_arn_and_never_the_key() -> None:
    recorder = relay(credentials_secret_arn=None, api_user="cmc-api-user", api_key=API_KEY)
    text = payload(recorder)
    assert text.startswith("#cloud-config\n")
    assert f"CMC_SECRET_ARN={CREATED_SECRET_ARN}" in text
    assert API_KEY not in text
    for resource in recorder.resources:
        if resource.type != "aws:secretsmanager/secretVersion:SecretVersion":
            assert not any(API_KEY in s for s in strings_in(resource.inputs)), resource.name
    outputs = recorder.outputs[recorder.one(TYPE_TOKEN).urn]
    assert not any(API_KEY in s for s in strings_in(outputs))


def test_created_secret_holds_the_credentials_as_a_pulumi_secret() -> None:
    recorder = relay(credentials_secret_arn=None, api_user="cmc-api-user", api_key=API_KEY)
    version = recorder.one("aws:secretsmanager/secretVersion:SecretVersion")
    secret_string = version.inputs["secretString"]
    assert is_secret(secret_string)  # marked secret in state and logs
    assert json.loads(secret_string["value"]) == {"username": "cmc-api-user", "password": API_KEY}
    # The instance boots only after the value exists: the bundle names the secret's ARN, and
    # the instance waits for the pointer naming that bundle.
    pointer = recorder.by_name("relay-payload-pointer")
    assert version.urn in pointer.dependencies
    assert pointer.urn in recorder.one(INSTANCE).dependencies


def test_ip_mode_has_no_secret_and_no_secret_access() -> None:
    recorder = relay(plan="pro", subdomain="acme", auth_mode="ip", credentials_secret_arn=None)
    assert sorted(r.name for r in recorder.of_type(ROLE_POLICY)) == [
        "relay-monitoring",
        "relay-read-payload",
        "relay-ssm-agent",
    ]
    assert recorder.of_type("aws:secretsmanager/secret:Secret") == []
    assert "CMC_SECRET_ARN=" not in payload(recorder)
    assert "smtp_sasl_auth_enable = no" in payload(recorder)


CERT_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/inbound-tls-GhIjKl"


@pytest.mark.parametrize("auth_mode", ["sasl", "ip"])
def test_role_reads_the_inbound_tls_certificate_secret(auth_mode: str) -> None:
    """With inbound_tls_secret_arn the host fetches that secret too (and refreshes it on the
    timer), in IP address authentication mode as well: exactly that ARN, its own statement."""
    ip: dict[str, Any] = {"plan": "pro", "subdomain": "acme", "credentials_secret_arn": None}
    ip = ip if auth_mode == "ip" else {}
    recorder = relay(auth_mode=auth_mode, inbound_tls_secret_arn=CERT_ARN, **ip)
    role_policy = recorder.by_name(READ_SECRETS)
    statements = {s["Sid"]: s for s in json.loads(role_policy.inputs["policy"])["Statement"]}
    assert statements.pop("ReadInboundTlsCertificate") == {
        "Sid": "ReadInboundTlsCertificate",
        "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": CERT_ARN,
    }
    assert [s["Resource"] for s in statements.values()] == ([SECRET_ARN] if not ip else [])
    text = payload(recorder)
    assert f"CMC_INBOUND_TLS_SECRET_ARN={CERT_ARN}" in text
    paths = list(bundle_of(recorder))
    assert "/usr/local/sbin/cmc-relay-fetch-secret" in paths
    assert "/etc/systemd/system/cmc-relay-fetch-secret.timer" in paths
    assert "/usr/local/sbin/cmc-relay-inbound-cert" not in paths


BUCKET = "aws:s3/bucket:Bucket"


def test_payload_bucket_is_private_tls_only_and_emptied_on_delete() -> None:
    recorder = relay()
    component = recorder.one(TYPE_TOKEN)
    bucket = recorder.one(BUCKET)
    assert bucket.name == "relay-payload" and bucket.parent == component.urn
    assert bucket.inputs["forceDestroy"] is True
    assert bucket.inputs["bucketPrefix"] == "relay-payload-"
    block = recorder.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert block.inputs == {
        "bucket": "relay-payload-0a1b2c3",
        "blockPublicAcls": True,
        "blockPublicPolicy": True,
        "ignorePublicAcls": True,
        "restrictPublicBuckets": True,
    }
    bucket_policy = recorder.one("aws:s3/bucketPolicy:BucketPolicy")
    assert bucket_policy.inputs["bucket"] == "relay-payload-0a1b2c3"
    assert block.urn in bucket_policy.dependencies  # a policy may not be put before the block
    (deny,) = json.loads(bucket_policy.inputs["policy"])["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    arn = "arn:aws:s3:::relay-payload-0a1b2c3"
    assert deny["Resource"] == [arn, f"{arn}/*"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("relay", "relay-payload-"),
        ("Mail_Relay.Prod", "mail-relay-prod-payload-"),
        ("__", "relay-payload-"),
        ("a" * 60, "a" * 28 + "-payload-"),
    ],
)
def test_payload_bucket_prefix_is_a_valid_s3_name_start(name: str, prefix: str) -> None:
    assert payload_bucket_prefix(name) == prefix
    assert len(prefix) <= 37  # S3's bucket_prefix limit, leaving room for AWS's suffix


def test_objects_hold_the_bundle_and_the_pointer_naming_it() -> None:
    recorder = relay(drain_on_delete=True)
    stored = stored_bundle(recorder)
    data = base64.b64decode(stored.inputs["contentBase64"])
    sha256 = hashlib.sha256(data).hexdigest()
    assert stored.inputs["bucket"] == "relay-payload-0a1b2c3"
    assert stored.inputs["key"] == f"payload/{sha256}.tar.gz"
    pointer = recorder.by_name("relay-payload-pointer")
    assert pointer.inputs["key"] == "payload/current.json"
    assert json.loads(pointer.inputs["content"]) == {"key": stored.inputs["key"], "sha256": sha256}
    assert stored.urn in pointer.dependencies  # the pointer never names a missing bundle
    # Every file is in the bundle, configuration included; the user data only finds it.
    files = bundle_of(recorder)
    assert f"CMC_SECRET_ARN={SECRET_ARN}" in files["/etc/cmc-relay/relay.env"]
    assert "10.20.0.0/16" in files["/etc/cmc-relay/main.cf"]
    assert "/usr/local/sbin/cmc-relay-drain" in files
    document = yaml.safe_load(user_data(recorder))
    assert [entry["path"] for entry in document["write_files"]] == [
        "/etc/cmc-relay/bundle.env",
        "/usr/local/sbin/cmc-relay-bootstrap",
    ]
    assert document["write_files"][0]["content"] == (
        "CMC_BUNDLE_BUCKET=relay-payload-0a1b2c3\n"
        "CMC_BUNDLE_REGION=ap-northeast-1\n"
        "CMC_BUNDLE_POINTER=payload/current.json\n"
        "CMC_DRAIN_ON_DELETE=yes\n"
    )
    assert sha256 not in user_data(recorder)
    # The instance boots only once the pointer and the right to read the bundles exist.
    instance = recorder.one(INSTANCE)
    assert pointer.urn in instance.dependencies
    assert recorder.by_name("relay-read-payload").urn in instance.dependencies


def test_role_reads_the_bundles_and_their_pointer_only() -> None:
    recorder = relay()
    policy = json.loads(recorder.by_name("relay-read-payload").inputs["policy"])
    assert policy["Statement"] == [
        {
            "Sid": "ReadPayloadBundle",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::relay-payload-0a1b2c3/payload/*",
        }
    ]
    assert recorder.by_name("relay-read-payload").inputs["role"] == "relay-role-id"


def test_a_configuration_change_is_a_new_bundle_and_the_same_user_data() -> None:
    """What a change in place rests on: the instance's user data (replace on change) stays, a
    new bundle is stored and the hosts apply it (their apply and verify commands run again)."""
    before, after = relay(), relay(allowed_cidrs=["10.20.0.0/16", "10.30.0.0/16"])
    assert stored_bundle(before).inputs["key"] != stored_bundle(after).inputs["key"]
    assert user_data(before) == user_data(after)
    assert before.one(INSTANCE).inputs["userDataReplaceOnChange"] is True
    for command in ("relay-apply", "relay-verify"):
        assert (
            before.by_name(command).inputs["triggers"] != after.by_name(command).inputs["triggers"]
        )


def test_switching_the_drain_replaces_the_hosts() -> None:
    """The drain step's removal would drain a serving host: the user data says whether it
    exists, so switching it is a new user data (a replacement), as before."""
    assert user_data(relay()) != user_data(relay(drain_on_delete=True))


def test_apply_runs_the_current_bundle_through_systems_manager_before_the_verifier() -> None:
    recorder = relay()
    stored = stored_bundle(recorder)
    sha256 = stored.inputs["key"].removeprefix("payload/").removesuffix(".tar.gz")
    apply = recorder.by_name("relay-apply")
    assert apply.inputs["triggers"] == ["relay-instance-id", sha256]
    argv = driver_argv(apply.inputs["create"])
    assert argv[argv.index("--instance-id") + 1] == "relay-instance-id"
    assert argv[argv.index("--purpose") + 1] == "apply"
    script = argv[argv.index("--run") + 1]
    assert script.endswith(f"/usr/local/sbin/cmc-relay-apply {sha256}")
    assert script.startswith("cloud-init status --wait")
    assert apply.deleted_with == recorder.one(INSTANCE).urn
    # After the pointer names the bundle; the verifier after the apply, on the same hash.
    assert recorder.by_name("relay-payload-pointer").urn in recorder.one(INSTANCE).dependencies
    assert recorder.one(INSTANCE).urn in apply.dependencies
    verify = recorder.by_name("relay-verify")
    assert apply.urn in verify.dependencies
    assert verify.inputs["triggers"] == ["relay-instance-id", sha256]


def test_without_verification_a_new_bundle_replaces_the_host() -> None:
    """No deployment step reaches the host with verification none: the user data names the
    bundle, so a configuration change is new user data, as it always was."""
    before = relay(verification="none")
    after = relay(verification="none", allowed_cidrs=["10.20.0.0/16", "10.30.0.0/16"])
    assert not [r for r in before.resources if r.name == "relay-apply"]
    sha256 = stored_bundle(before).inputs["key"].removeprefix("payload/").removesuffix(".tar.gz")
    assert f"CMC_BUNDLE_PINNED={sha256}" in user_data(before)
    assert user_data(before) != user_data(after)


def test_outputs_are_registered() -> None:
    recorder = relay()
    outputs = recorder.outputs[recorder.one(TYPE_TOKEN).urn]
    assert outputs == {
        "instance_id": "relay-instance-id",
        "private_ip": "10.20.1.10",
        "public_ip": "203.0.113.25",
        "smtp_endpoint": "cmc-relay.internal:25",  # the name in the private zone
        "security_group_id": "relay-sg-id",
        "smtp_relay_host": "[sandbox.smtps.jp]:10025",
        "secret_arn": SECRET_ARN,
        "verification_report": VERIFIER_REPORT,
        "sending_ips": ["203.0.113.25"],
        "log_group_name": "/cmc-relay/cmc-relay/test/relay",
        "dashboard_url": "https://ap-northeast-1.console.aws.amazon.com/cloudwatch/home"
        "?region=ap-northeast-1#dashboards:name=cmc-relay-test-relay",
        "image_id": LOOKED_UP_AMI,
        "latest_image_id": LOOKED_UP_AMI,
    }  # alarm_topic_arn is None: no topic without alarm_topic_arn or alarm_email


def test_tags_reach_every_taggable_resource() -> None:
    recorder = relay(tags={"team": "mail"})
    tagged = [r for r in recorder.resources if "tags" in r.inputs]
    assert {r.type for r in tagged} >= {INSTANCE, "aws:ec2/eip:Eip", "aws:iam/role:Role"}
    assert all(r.inputs["tags"]["team"] == "mail" for r in tagged)


def test_bad_input_fails_before_any_resource_exists() -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError, match="allowed_cidrs"):
        relay(allowed_cidrs=["0.0.0.0/0"], recorder=recorder)
    assert recorder.resources == []  # not even the component


def test_secret_arn_known_only_at_deploy_time_is_still_checked() -> None:
    def program() -> None:
        late_arn = pulumi.Output.from_input("arn:aws:s3:::not-a-secret")
        RelayHost(
            "relay",
            {
                "vpc_id": "vpc-team",
                "subnet_id": "subnet-team",
                "allowed_cidrs": ["10.20.0.0/16"],
                "credentials_secret_arn": late_arn,
            },
        )

    with pytest.raises(Exception, match="is not a Secrets Manager secret ARN"):
        run_program(program)


def test_the_payload_bucket_is_versioned() -> None:
    versioning = relay().one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.name == "relay-payload"
    assert versioning.inputs == {
        "bucket": "relay-payload-0a1b2c3",
        "versioningConfiguration": {"status": "Enabled"},
    }
