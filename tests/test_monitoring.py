"""Metrics, mail log, alarms and dashboard of a relay, under Pulumi mocks and as pure documents.

What CloudWatch does with these inputs (evaluating alarms, drawing graphs) is not exercised
here: these tests check what the component asks for, and that every metric it names is one
the on-host publisher is configured to publish (``userdata.metrics``).
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from cmc_relay.components import RelayHost
from cmc_relay.components.monitoring import (
    dashboard_body,
    dashboard_name,
    dashboard_url,
    relay_dimension,
    relay_monitoring,
)
from cmc_relay.components.policies import alarm_topic_key_policy, monitoring_policy
from cmc_relay.userdata.metrics import (
    INSTANCE_DIMENSION,
    METRICS,
    RELAY_DIMENSION,
    Monitoring,
    metric,
)
from tests.pulumi_harness import (
    ACCOUNT,
    REGION,
    Recorder,
    bundle_of,
    kms_key_id,
    run_program,
    run_stack,
    strings_in,
)

SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
KMS_KEY = "arn:aws:kms:ap-northeast-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:ops-alarms"
SUBNETS = ["subnet-1a", "subnet-1c", "subnet-1d"]
API_KEY = "api-key-marker-7Qx9"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
INSTANCE = "aws:ec2/instance:Instance"
RELAY = "cmc-relay/test/relay"  # project/stack/component under the harness
RECOVER = f"arn:aws:automate:{REGION}:ec2:recover"
REBOOT = f"arn:aws:automate:{REGION}:ec2:reboot"
REPAIRS = {"recover": RECOVER, "reboot": REBOOT}  # the EC2 alarms that repair, by suffix
PUBLISHED = {m.name for m in METRICS}


ARGS: dict[str, Any] = {
    "vpc_id": "vpc-team",
    "subnet_id": SUBNETS[0],
    "allowed_cidrs": ["10.20.0.0/16"],
    "api_user": "cmc-user",
    "api_key": API_KEY,
}


def relay(replicas: int = 1, **changes: Any) -> Recorder:
    args: dict[str, Any] = {
        **ARGS,
        "replicas": replicas,
        **({"subnet_ids": SUBNETS[:replicas]} if replicas > 1 else {}),
        **changes,
    }
    return run_program(lambda: RelayHost("relay", args))  # type: ignore[arg-type]


def alarms(recorder: Recorder) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in recorder.of_type(ALARM)}


HOST_ALARMS = {
    # suffix: (metric, statistic, period, evaluation periods, comparison, threshold, missing)
    "deferred": (
        metric("queue.deferred").name, "Maximum", 60, 10, "GreaterThanThreshold", 100,
        "notBreaching",
    ),
    "oldest-message": (
        metric("queue.oldest_age").name, "Maximum", 60, 1, "GreaterThanThreshold", 30 * 60,
        "notBreaching",
    ),
    "bounced": (
        metric("delivery.bounced").name, "Sum", 300, 1, "GreaterThanOrEqualToThreshold", 1,
        "notBreaching",
    ),
    "refused": (
        metric("session.refused").name, "Sum", 300, 1, "GreaterThanOrEqualToThreshold", 5,
        "notBreaching",
    ),
    "sent": (
        metric("delivery.sent").name, "Sum", 300, 1, "GreaterThanThreshold", 5000, "notBreaching",
    ),
    "silent": (
        metric("queue.deferred").name, "SampleCount", 60, 5, "LessThanThreshold", 1, "breaching",
    ),
    "queue-disk": (
        metric("host.queue_free_percent").name, "Minimum", 60, 5, "LessThanThreshold", 20,
        "notBreaching",
    ),
    # Pending for every hour of 3 days.
    "reboot-required": (
        metric("host.reboot_required").name, "Minimum", 3600, 72,
        "GreaterThanOrEqualToThreshold", 1, "notBreaching",
    ),
}  # fmt: skip


def shape(inputs: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("metricName", "statistic", "period", "evaluationPeriods", "comparisonOperator")
    return (*(inputs[k] for k in keys), inputs["threshold"], inputs["treatMissingData"])


@pytest.mark.parametrize("replicas", [1, 2])
def test_each_host_has_its_alarms_on_its_own_metrics(replicas: int) -> None:
    found = alarms(relay(replicas, alarm_topic_arn=TOPIC_ARN))
    for index in range(replicas):
        host = "relay" if index == 0 else f"relay-{index}"
        for suffix, expected in HOST_ALARMS.items():
            inputs = found[f"{host}-{suffix}-alarm"]
            assert shape(inputs) == expected, suffix
            assert inputs["namespace"] == "CMCRelay"
            assert inputs["dimensions"] == {
                RELAY_DIMENSION: RELAY,
                INSTANCE_DIMENSION: f"{host}-instance-id",
            }
            assert inputs["metricName"] in PUBLISHED
            assert inputs["alarmActions"] == inputs["okActions"] == [TOPIC_ARN]


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_host_s_alarms_wait_until_it_is_verified(replicas: int) -> None:
    """Created before the host published, the silent alarm would fire while it boots."""
    recorder = relay(replicas, alarm_topic_arn=TOPIC_ARN)
    for index in range(replicas):
        host = "relay" if index == 0 else f"relay-{index}"
        verified = recorder.by_name(f"{host}-verify").urn
        for suffix in (*HOST_ALARMS, *REPAIRS):
            assert verified in recorder.by_name(f"{host}-{suffix}-alarm").dependencies, suffix
    if replicas > 1:
        balancer = recorder.by_name("relay-unhealthy-targets-alarm").dependencies
        assert {recorder.by_name(f"relay{i}-verify").urn for i in ("", "-1")} <= set(balancer)


def test_thresholds_and_namespace_come_from_the_arguments() -> None:
    found = alarms(
        relay(
            metrics_namespace="Mail/Relay",
            alarm_deferred_threshold=0,
            alarm_oldest_message_minutes=90,
            alarm_bounced_threshold=3,
            alarm_refused_threshold=20,
            alarm_queue_free_percent=35,
            alarm_reboot_required_days=7,
            alarm_sent_threshold=12000,
        )
    )
    thresholds = {name: inputs["threshold"] for name, inputs in found.items()}
    assert thresholds["relay-deferred-alarm"] == 0
    assert thresholds["relay-oldest-message-alarm"] == 90 * 60  # the metric is in seconds
    assert thresholds["relay-bounced-alarm"] == 3
    assert thresholds["relay-refused-alarm"] == 20
    assert thresholds["relay-queue-disk-alarm"] == 35
    reboot_required = found["relay-reboot-required-alarm"]
    # 7 days of hours: the longest CloudWatch evaluates (period x evaluations <= 604,800 s).
    assert reboot_required["period"] * reboot_required["evaluationPeriods"] == 7 * 24 * 3600
    assert thresholds["relay-sent-alarm"] == 12000
    assert found["relay-silent-alarm"]["namespace"] == "Mail/Relay"


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_host_recovers_on_a_failed_system_status_check(replicas: int) -> None:
    found = alarms(relay(replicas, alarm_topic_arn=TOPIC_ARN))
    recovery = {name: inputs for name, inputs in found.items() if name.endswith("-recover-alarm")}
    assert len(recovery) == replicas
    for name, inputs in recovery.items():
        host = name.removesuffix("-recover-alarm")
        assert (inputs["namespace"], inputs["metricName"]) == (
            "AWS/EC2",
            "StatusCheckFailed_System",
        )
        assert inputs["dimensions"] == {"InstanceId": f"{host}-instance-id"}
        assert inputs["alarmActions"] == [RECOVER, TOPIC_ARN]
        assert inputs["okActions"] == [TOPIC_ARN]


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_host_reboots_on_a_failed_instance_status_check(replicas: int) -> None:
    """A hung kernel or a full root file system: EC2's reboot action, after longer than the
    recovery alarm waits (a hardware fault fails both checks and is recovered instead)."""
    found = alarms(relay(replicas, alarm_topic_arn=TOPIC_ARN))
    reboot = {name: inputs for name, inputs in found.items() if name.endswith("-reboot-alarm")}
    assert len(reboot) == replicas
    for name, inputs in reboot.items():
        host = name.removesuffix("-reboot-alarm")
        assert (inputs["namespace"], inputs["metricName"]) == (
            "AWS/EC2",
            "StatusCheckFailed_Instance",
        )
        assert inputs["dimensions"] == {"InstanceId": f"{host}-instance-id"}
        assert (inputs["statistic"], inputs["period"], inputs["evaluationPeriods"]) == (
            "Maximum", 60, 3,
        )  # fmt: skip
        assert (inputs["comparisonOperator"], inputs["threshold"]) == (
            "GreaterThanOrEqualToThreshold", 1,
        )  # fmt: skip
        assert inputs["alarmActions"] == [REBOOT, TOPIC_ARN]
        recover = found[f"{host}-recover-alarm"]
        assert inputs["evaluationPeriods"] > recover["evaluationPeriods"]


def test_the_balancer_alarm_exists_only_with_several_hosts() -> None:
    assert not any("unhealthy" in name for name in alarms(relay(1)))
    found = alarms(relay(2, alarm_email="ops@example.com"))
    balancer = found["relay-unhealthy-targets-alarm"]
    assert (balancer["namespace"], balancer["metricName"]) == (
        "AWS/NetworkELB",
        "UnHealthyHostCount",
    )
    assert balancer["dimensions"] == {
        "LoadBalancer": "net/relay-nlb/0123456789abcdef",
        "TargetGroup": "targetgroup/relay-nlb-targets/fedcba9876543210",
    }
    assert balancer["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert balancer["threshold"] == 1
    assert balancer["alarmActions"] == [f"arn:aws:sns:{REGION}:{ACCOUNT}:relay-alarms-1a2b3c"]


@pytest.mark.parametrize("replicas", [1, 2])
def test_alarms_false_leaves_only_the_repairing_alarms_and_no_topic(replicas: int) -> None:
    recorder = relay(replicas, alarms=False)
    found = alarms(recorder)
    assert sorted(found) == sorted(
        f"{'relay' if i == 0 else f'relay-{i}'}-{suffix}-alarm"
        for i in range(replicas)
        for suffix in REPAIRS
    )
    for name, inputs in found.items():
        assert inputs["alarmActions"] == [REPAIRS[name.split("-")[-2]]], name
    assert recorder.of_type(TOPIC) == recorder.of_type(SUBSCRIPTION) == []


def test_alarm_email_creates_a_topic_with_the_address_subscribed() -> None:
    recorder = relay(alarm_email="ops@example.com")
    topic = recorder.one(TOPIC)
    assert topic.name == "relay-alarms"
    # Encrypted with a key of its own that CloudWatch may use (not alias/aws/sns).
    key = recorder.one("aws:kms/key:Key")
    alarms_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{kms_key_id('relay-alarms')}"
    assert topic.inputs["kmsMasterKeyId"] == alarms_key
    assert key.inputs["enableKeyRotation"] is True
    assert json.loads(key.inputs["policy"]) == alarm_topic_key_policy(
        "aws", ACCOUNT, REGION, "relay-"
    )
    subscription = recorder.one(SUBSCRIPTION)
    assert subscription.inputs["protocol"] == "email"
    assert subscription.inputs["endpoint"] == "ops@example.com"
    topic_arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:relay-alarms-1a2b3c"
    assert subscription.inputs["topic"] == topic_arn
    for name, inputs in alarms(recorder).items():
        assert topic_arn in inputs["alarmActions"], name
    outputs = recorder.outputs[recorder.by_name("relay").urn]
    assert outputs["alarm_topic_arn"] == topic_arn


def test_a_given_topic_is_used_and_none_is_created() -> None:
    recorder = relay(alarm_topic_arn=TOPIC_ARN)
    assert recorder.of_type(TOPIC) == recorder.of_type(SUBSCRIPTION) == []
    assert recorder.outputs[recorder.by_name("relay").urn]["alarm_topic_arn"] == TOPIC_ARN


def test_without_topic_or_email_the_alarms_notify_nobody() -> None:
    recorder = relay()
    assert recorder.of_type(TOPIC) == []
    for name, inputs in alarms(recorder).items():
        assert inputs.get("okActions", []) == [], name
        repair = [action for suffix, action in REPAIRS.items() if f"-{suffix}-alarm" in name]
        assert inputs.get("alarmActions", []) == repair, name


def test_a_topic_arn_known_only_at_deployment_is_checked_then() -> None:
    def program() -> None:
        wrong = pulumi.Output.from_input(f"arn:aws:sqs:{REGION}:{ACCOUNT}:queue")
        RelayHost("relay", {**ARGS, "alarm_topic_arn": wrong})  # type: ignore[typeddict-item]

    with pytest.raises(Exception, match=r"alarm_topic_arn .*an ARN of sqs, not of SNS"):
        run_program(program)


def test_the_log_group_has_the_relay_name_retention_and_key() -> None:
    recorder = relay(log_retention_days=90, log_kms_key_arn=KMS_KEY)
    group = recorder.one(LOG_GROUP)
    assert group.name == "relay-mail-log"
    assert group.inputs["name"] == "/cmc-relay/cmc-relay/test/relay"
    assert group.inputs["retentionInDays"] == 90
    assert group.inputs["kmsKeyId"] == KMS_KEY
    outputs = recorder.outputs[recorder.by_name("relay").urn]
    assert outputs["log_group_name"] == "/cmc-relay/cmc-relay/test/relay"
    default = relay().one(LOG_GROUP).inputs
    assert default["retentionInDays"] == 30 and "kmsKeyId" not in default


def test_the_payload_tells_the_host_where_to_report() -> None:
    recorder = relay(metrics_namespace="Mail/Relay")
    published = json.loads(bundle_of(recorder)["/etc/cmc-relay/metrics.json"])
    assert published["namespace"] == "Mail/Relay"
    assert published["dimensions"] == {RELAY_DIMENSION: RELAY}


def test_the_role_publishes_to_its_namespace_and_ships_to_its_log_group_only() -> None:
    recorder = relay(metrics_namespace="Mail/Relay")
    policy = json.loads(recorder.by_name("relay-monitoring").inputs["policy"])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    metrics = statements["PublishRelayMetrics"]
    assert metrics["Action"] == "cloudwatch:PutMetricData"
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Mail/Relay"}}
    logs = statements["ShipMailLog"]
    group_arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/cmc-relay/cmc-relay/test/relay"
    assert logs["Resource"] == [group_arn, f"{group_arn}:log-stream:*"]
    assert set(logs["Action"]) == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:DescribeLogStreams",
    }
    assert recorder.by_name("relay-monitoring").inputs["role"] == "relay-role-7f3a2c1"
    # The host is verified only once it may publish: the policy is one the verifier waits on.
    assert recorder.by_name("relay-monitoring").urn in recorder.by_name("relay-verify").dependencies


def test_monitoring_policy_scopes_nothing_wider() -> None:
    group = "arn:aws:logs:ap-northeast-1:123456789012:log-group:/cmc-relay/p/s/r"
    for statement in monitoring_policy("CMCRelay", group)["Statement"]:
        if statement["Resource"] == "*":  # PutMetricData takes no resource: the condition scopes it
            assert statement["Action"] == "cloudwatch:PutMetricData"
            assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "CMCRelay"}}
        else:
            assert all(resource.startswith(group) for resource in statement["Resource"])


def dashboard_metrics(body: dict[str, Any]) -> list[list[Any]]:
    return [line for widget in body["widgets"] for line in widget["properties"]["metrics"]]


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_dashboard_graphs_every_published_metric_per_host(replicas: int) -> None:
    recorder = relay(replicas, metrics_namespace="Mail/Relay")
    board = recorder.one(DASHBOARD)
    assert board.inputs["dashboardName"] == "cmc-relay-test-relay"
    body = json.loads(board.inputs["dashboardBody"])  # valid JSON
    lines = dashboard_metrics(body)
    hosts = ["relay" if i == 0 else f"relay-{i}" for i in range(replicas)]
    for host in hosts:
        shown = {
            line[1]
            for line in lines
            if line[2:6] == [RELAY_DIMENSION, RELAY, INSTANCE_DIMENSION, f"{host}-instance-id"]
        }
        assert shown == PUBLISHED, host
    for line in lines:
        assert line[0] == "Mail/Relay"
        assert line[1] in PUBLISHED
        assert line[-1]["stat"] == metric_by_name(line[1]).statistic
    assert {w["properties"]["region"] for w in body["widgets"]} == {REGION}
    url = recorder.outputs[recorder.by_name("relay").urn]["dashboard_url"]
    assert url == (
        f"https://{REGION}.console.aws.amazon.com/cloudwatch/home"
        f"?region={REGION}#dashboards:name=cmc-relay-test-relay"
    )


def metric_by_name(name: str) -> Any:
    (found,) = [m for m in METRICS if m.name == name]
    return found


def test_the_dashboard_holds_nothing_secret() -> None:
    recorder = relay()
    for resource in recorder.of_type(DASHBOARD) + recorder.of_type(ALARM):
        assert not any(API_KEY in s for s in strings_in(resource.inputs)), resource.name
    assert "cmc-user" not in recorder.one(DASHBOARD).inputs["dashboardBody"]


def test_widgets_do_not_overlap() -> None:
    body = dashboard_body(Monitoring(relay="p/s/r"), ["i-1", "i-2", "i-3"], REGION)
    cells = set()
    for widget in body["widgets"]:
        for x in range(widget["x"], widget["x"] + widget["width"]):
            for y in range(widget["y"], widget["y"] + widget["height"]):
                assert (x, y) not in cells
                cells.add((x, y))


@pytest.mark.parametrize(
    ("partition", "region", "console"),
    [
        ("aws", "us-east-1", "console.aws.amazon.com"),
        ("aws-cn", "cn-north-1", "console.amazonaws.cn"),
        ("aws-us-gov", "us-gov-west-1", "console.amazonaws-us-gov.com"),
    ],
)
def test_the_dashboard_url_is_in_the_partition_s_console(
    partition: str, region: str, console: str
) -> None:
    assert dashboard_url(partition, region, "p-s-r") == (
        f"https://{region}.{console}/cloudwatch/home?region={region}#dashboards:name=p-s-r"
    )


def test_names_are_what_cloudwatch_accepts() -> None:
    monitoring = relay_monitoring("CMCRelay", relay_dimension("my.project", "dev:eu", "relay one"))
    assert monitoring.relay == "my.project/dev:eu/relay one"  # dimension values take anything
    assert monitoring.log_group == "/cmc-relay/my.project/dev-eu/relay-one"
    assert dashboard_name(monitoring.relay) == "my-project-dev-eu-relay-one"


def test_stack_config_keys_reach_the_alarms_log_group_and_outputs() -> None:
    recorder = run_stack(
        {
            "apiUser": "cmc-user",
            "apiKey": API_KEY,
            "metricsNamespace": "Mail/Relay",
            "logRetentionDays": 90,
            "alarmEmail": "ops@example.com",
            "alarmDeferredThreshold": 7,
            "alarmOldestMessageMinutes": 15,
            "alarmBouncedThreshold": 2,
            "alarmRefusedThreshold": 9,
            "alarmQueueFreePercent": 10,
            "alarmRebootRequiredDays": 2,
        },
        secret_keys=("apiKey",),
    )
    thresholds = {name: inputs["threshold"] for name, inputs in alarms(recorder).items()}
    assert thresholds["relay-deferred-alarm"] == 7
    assert thresholds["relay-oldest-message-alarm"] == 15 * 60
    assert (thresholds["relay-bounced-alarm"], thresholds["relay-refused-alarm"]) == (2, 9)
    assert thresholds["relay-queue-disk-alarm"] == 10
    assert alarms(recorder)["relay-reboot-required-alarm"]["evaluationPeriods"] == 2 * 24
    assert recorder.one(LOG_GROUP).inputs["retentionInDays"] == 90
    assert recorder.one(SUBSCRIPTION).inputs["endpoint"] == "ops@example.com"
    outputs = recorder.stack_outputs
    assert outputs["logGroupName"] == "/cmc-relay/cmc-relay/test/relay"
    assert outputs["alarmTopicArn"] == f"arn:aws:sns:{REGION}:{ACCOUNT}:relay-alarms-1a2b3c"
    assert outputs["dashboardUrl"].endswith("#dashboards:name=cmc-relay-test-relay")


def test_stack_config_alarms_false_turns_the_alarms_off() -> None:
    recorder = run_stack(
        {"apiUser": "cmc-user", "apiKey": API_KEY, "alarms": False}, secret_keys=("apiKey",)
    )
    assert sorted(alarms(recorder)) == ["relay-reboot-alarm", "relay-recover-alarm"]
