"""What the component tells CloudWatch about a relay: its names, alarms and dashboard. Pure.

Every metric named here comes from ``userdata.metrics``, which the on-host publisher's
configuration is rendered from: an alarm or a widget cannot name a metric nobody publishes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pulumi

from cmc_relay.components.args import AlarmThresholds
from cmc_relay.userdata.metrics import (
    INSTANCE_DIMENSION,
    PERIOD_SECONDS,
    RELAY_DIMENSION,
    Metric,
    Monitoring,
    metric,
)

# Log group names take A-Z a-z 0-9 _ - / . #; dashboard names A-Z a-z 0-9 - _.
_NOT_IN_LOG_GROUP = re.compile(r"[^A-Za-z0-9_\-/.#]")
_NOT_IN_DASHBOARD = re.compile(r"[^A-Za-z0-9_\-]")
ALARM_PERIOD_SECONDS: Final = 300  # counts add up over 5 minutes
DEFERRED_MINUTES: Final = 10
SILENT_MINUTES: Final = 5
QUEUE_DISK_MINUTES: Final = 5
# RebootRequired is judged hour by hour: CloudWatch evaluates at most 7 days of periods of an
# hour or more (period x evaluations <= 604,800 s), and at most 1 day of shorter periods.
REBOOT_PERIOD_SECONDS: Final = 3600
INSTANCE_CHECK_MINUTES: Final = 3
EC2_NAMESPACE: Final = "AWS/EC2"
# The suffixes of the alarms that are not on the relay's own metrics.
RECOVER_ALARM: Final = "recover"
REBOOT_ALARM: Final = "reboot"
UNHEALTHY_TARGETS: Final = "unhealthy-targets"
NLB_NAMESPACE: Final = "AWS/NetworkELB"


def relay_dimension(project: str, stack: str, name: str) -> str:
    """The Relay dimension's value: project, stack and component, so relays of several stacks
    in one account and namespace keep their metrics apart."""
    return f"{project}/{stack}/{name}"


def mail_log_group(relay: str) -> str:
    return _NOT_IN_LOG_GROUP.sub("-", f"/cmc-relay/{relay}")[:512]


def relay_monitoring(namespace: str, relay: str) -> Monitoring:
    """Where one relay reports: ``relay`` is its ``relay_dimension``."""
    return Monitoring(namespace=namespace, relay=relay, log_group=mail_log_group(relay))


def dashboard_name(relay: str) -> str:
    return _NOT_IN_DASHBOARD.sub("-", relay)[:255]


# The AWS console's domain in each partition.
CONSOLE_DOMAINS: Final = {
    "aws": "console.aws.amazon.com",
    "aws-cn": "console.amazonaws.cn",
    "aws-us-gov": "console.amazonaws-us-gov.com",
}


def dashboard_url(partition: str, region: str, name: str) -> str:
    console = CONSOLE_DOMAINS.get(partition, CONSOLE_DOMAINS["aws"])
    return f"https://{region}.{console}/cloudwatch/home?region={region}#dashboards:name={name}"


@dataclass(frozen=True)
class AlarmSpec:
    """One ``aws.cloudwatch.MetricAlarm``'s inputs, but its actions; ``suffix`` ends its name."""

    suffix: str
    description: str
    namespace: str
    metric_name: str
    dimensions: Mapping[str, pulumi.Input[str]]
    statistic: str
    period: int
    evaluation_periods: int
    comparison_operator: str
    threshold: int
    treat_missing_data: str = "notBreaching"
    repair_actions: tuple[str, ...] = ()  # run on alarm, before any notification


def host_alarms(
    monitoring: Monitoring, thresholds: AlarmThresholds, instance_id: pulumi.Input[str]
) -> list[AlarmSpec]:
    """The alarms on one host's own metrics."""
    dimensions = {RELAY_DIMENSION: monitoring.relay, INSTANCE_DIMENSION: instance_id}

    def on(metric_: Metric, statistic: str | None = None, **rest: Any) -> dict[str, Any]:
        return {
            "namespace": monitoring.namespace,
            "metric_name": metric_.name,
            "dimensions": dimensions,
            "statistic": statistic or metric_.statistic,
            **rest,
        }

    deferred, oldest = metric("queue.deferred"), metric("queue.oldest_age")
    bounced, refused = metric("delivery.bounced"), metric("session.refused")
    queue_free, reboot = metric("host.queue_free_percent"), metric("host.reboot_required")
    sent = metric("delivery.sent")
    return [
        AlarmSpec(
            "deferred",
            f"More than {thresholds.deferred_messages} messages deferred for "
            f"{DEFERRED_MINUTES} minutes",
            **on(
                deferred,
                period=PERIOD_SECONDS,
                evaluation_periods=DEFERRED_MINUTES * 60 // PERIOD_SECONDS,
                comparison_operator="GreaterThanThreshold",
                threshold=thresholds.deferred_messages,
            ),
        ),
        AlarmSpec(
            "oldest-message",
            f"A message queued for more than {thresholds.oldest_message_minutes} minutes",
            **on(
                oldest,
                period=PERIOD_SECONDS,
                evaluation_periods=1,
                comparison_operator="GreaterThanThreshold",
                threshold=thresholds.oldest_message_minutes * 60,
            ),
        ),
        AlarmSpec(
            "bounced",
            f"{thresholds.bounced} or more messages bounced in 5 minutes",
            **on(
                bounced,
                period=ALARM_PERIOD_SECONDS,
                evaluation_periods=1,
                comparison_operator="GreaterThanOrEqualToThreshold",
                threshold=thresholds.bounced,
            ),
        ),
        AlarmSpec(
            "refused",
            f"The service refused {thresholds.refused} or more sessions in 5 minutes",
            **on(
                refused,
                period=ALARM_PERIOD_SECONDS,
                evaluation_periods=1,
                comparison_operator="GreaterThanOrEqualToThreshold",
                threshold=thresholds.refused,
            ),
        ),
        # Clients over their own limits cannot raise this; many clients, or one compromised
        # application spread over addresses, can: the volume the company's key sends.
        AlarmSpec(
            "sent",
            f"More than {thresholds.sent} messages sent in 5 minutes",
            **on(
                sent,
                period=ALARM_PERIOD_SECONDS,
                evaluation_periods=1,
                comparison_operator="GreaterThanThreshold",
                threshold=thresholds.sent,
            ),
        ),
        # Every sample carries the deferred queue: none for 5 minutes means the host, its
        # publisher or its way to CloudWatch is down, and missing data is what it looks like.
        AlarmSpec(
            "silent",
            f"No metrics from the host for {SILENT_MINUTES} minutes",
            **on(
                deferred,
                statistic="SampleCount",
                period=PERIOD_SECONDS,
                evaluation_periods=SILENT_MINUTES * 60 // PERIOD_SECONDS,
                comparison_operator="LessThanThreshold",
                threshold=1,
                treat_missing_data="breaching",
            ),
        ),
        # Postfix refuses new mail once less than queue_minfree is left (main.cf): this warns
        # well before, while the queue still has room for an outage's backlog.
        AlarmSpec(
            "queue-disk",
            f"Less than {thresholds.queue_free_percent}% of the queue's file system free for "
            f"{QUEUE_DISK_MINUTES} minutes",
            **on(
                queue_free,
                statistic="Minimum",
                period=PERIOD_SECONDS,
                evaluation_periods=QUEUE_DISK_MINUTES * 60 // PERIOD_SECONDS,
                comparison_operator="LessThanThreshold",
                threshold=thresholds.queue_free_percent,
            ),
        ),
        # Every hour of the last N days with a reboot pending (Minimum 1): the updates are
        # installed but not yet in force, and no maintenance window has rebooted the host.
        AlarmSpec(
            "reboot-required",
            f"Installed updates have waited for a reboot for "
            f"{thresholds.reboot_required_days} days",
            **on(
                reboot,
                statistic="Minimum",
                period=REBOOT_PERIOD_SECONDS,
                evaluation_periods=thresholds.reboot_required_days * 24,
                comparison_operator="GreaterThanOrEqualToThreshold",
                threshold=1,
            ),
        ),
    ]


def recovery_alarm(instance_id: pulumi.Input[str], recover: str) -> AlarmSpec:
    """EC2's system status check failing for 2 minutes: its action recovers the instance onto
    other hardware, with its ID, addresses and volumes (AWS's recommended settings)."""
    return AlarmSpec(
        RECOVER_ALARM,
        "The EC2 system status check failed: recovering the instance",
        namespace=EC2_NAMESPACE,
        metric_name="StatusCheckFailed_System",
        dimensions={"InstanceId": instance_id},
        statistic="Maximum",
        period=60,
        evaluation_periods=2,
        comparison_operator="GreaterThanOrEqualToThreshold",
        threshold=1,
        repair_actions=(recover,),
    )


def recover_action(partition: str, region: str) -> str:
    return f"arn:{partition}:automate:{region}:ec2:recover"


def reboot_alarm(instance_id: pulumi.Input[str], reboot: str) -> AlarmSpec:
    """EC2's instance status check failing for 3 minutes (a hung kernel, a full root file
    system, exhausted memory): its action reboots the instance. Longer than the recovery
    alarm's 2 minutes, so a hardware fault, which fails both checks, is recovered rather than
    rebooted; longer than a routine reboot, which fails the check for a minute or so."""
    return AlarmSpec(
        REBOOT_ALARM,
        "The EC2 instance status check failed: rebooting the instance",
        namespace=EC2_NAMESPACE,
        metric_name="StatusCheckFailed_Instance",
        dimensions={"InstanceId": instance_id},
        statistic="Maximum",
        period=60,
        evaluation_periods=INSTANCE_CHECK_MINUTES,
        comparison_operator="GreaterThanOrEqualToThreshold",
        threshold=1,
        repair_actions=(reboot,),
    )


def reboot_action(partition: str, region: str) -> str:
    return f"arn:{partition}:automate:{region}:ec2:reboot"


def unhealthy_targets_alarm(
    load_balancer_suffix: pulumi.Input[str], target_group_suffix: pulumi.Input[str]
) -> AlarmSpec:
    """With several hosts: the balancer finds one unhealthy for 5 minutes."""
    return AlarmSpec(
        UNHEALTHY_TARGETS,
        f"A relay host failed the balancer's health checks for {SILENT_MINUTES} minutes",
        namespace=NLB_NAMESPACE,
        metric_name="UnHealthyHostCount",
        dimensions={"LoadBalancer": load_balancer_suffix, "TargetGroup": target_group_suffix},
        statistic="Maximum",
        period=60,
        evaluation_periods=SILENT_MINUTES,
        comparison_operator="GreaterThanOrEqualToThreshold",
        threshold=1,
    )


# The dashboard's rows: a title and the metrics (by key) each host's graph shows.
DASHBOARD_ROWS: Final = (
    ("Queues (messages)", ("queue.active", "queue.deferred", "queue.hold", "queue.incoming")),
    ("Deliveries per minute", ("delivery.sent", "delivery.deferred", "delivery.bounced")),
    (
        "Refused sessions, TLS not established, AUTH failures (per minute)",
        ("session.refused", "session.tls_failed", "session.auth_failed"),
    ),
    ("Oldest queued message (seconds)", ("queue.oldest_age",)),
    (
        "Queue file system free (%), reboot required (1)",
        ("host.queue_free_percent", "host.reboot_required"),
    ),
    (
        "Sent without TLS, over unverified TLS (per minute)",
        ("delivery.sent_without_tls", "delivery.sent_unverified_tls"),
    ),
)
_WIDTH, _HEIGHT = 12, 6


def dashboard_body(
    monitoring: Monitoring, instance_ids: Sequence[str], region: str
) -> dict[str, Any]:
    """A row per kind of metric, a graph per host in it (hosts in order, two per line)."""
    widgets = []
    y = 0
    for title, keys in DASHBOARD_ROWS:
        for index, instance_id in enumerate(instance_ids):
            dimensions = [RELAY_DIMENSION, monitoring.relay, INSTANCE_DIMENSION, instance_id]
            widgets.append(
                {
                    "type": "metric",
                    "x": index % 2 * _WIDTH,
                    "y": y + index // 2 * _HEIGHT,
                    "width": _WIDTH,
                    "height": _HEIGHT,
                    "properties": {
                        "title": f"{title}: host {index} ({instance_id})",
                        "region": region,
                        "view": "timeSeries",
                        "period": PERIOD_SECONDS,
                        "metrics": [
                            [
                                monitoring.namespace,
                                metric(key).name,
                                *dimensions,
                                {"stat": metric(key).statistic, "label": metric(key).description},
                            ]
                            for key in keys
                        ],
                    },
                }
            )
        y += (len(instance_ids) + 1) // 2 * _HEIGHT
    return {"widgets": widgets}
