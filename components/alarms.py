"""The component's monitoring resources: the hosts' right to publish metrics and ship the mail
log, the alarms and the topic they notify (with its KMS key), and the dashboard. What they
hold (metrics, thresholds, graphs) is decided by ``components/monitoring.py``."""

import json
from collections.abc import Mapping
from typing import Final

import pulumi
import pulumi_aws as aws

from cmc_relay.components.args import AlarmThresholds, MonitoringOptions
from cmc_relay.components.fleet import Checked, Host
from cmc_relay.components.monitoring import (
    REBOOT_ALARM,
    RECOVER_ALARM,
    UNHEALTHY_TARGETS,
    AlarmSpec,
    dashboard_body,
    dashboard_name,
    dashboard_url,
    host_alarms,
    reboot_action,
    reboot_alarm,
    recover_action,
    recovery_alarm,
)
from cmc_relay.components.policies import alarm_topic_key_policy, monitoring_policy
from cmc_relay.userdata.metrics import DEFAULT_MONITORING, Monitoring


def monitoring_role_policy(
    parent: pulumi.Resource,
    name: str,
    profile: aws.iam.InstanceProfile,
    monitoring: pulumi.Output[Monitoring],
    log_group: aws.cloudwatch.LogGroup,
) -> aws.iam.RolePolicy:
    """Publishing the relay's metrics and shipping its mail log."""
    return aws.iam.RolePolicy(
        f"{name}-monitoring",
        role=profile.role,
        policy=pulumi.Output.all(monitoring, log_group.arn).apply(
            lambda values: json.dumps(monitoring_policy(values[0].namespace, values[1]))
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


# Which alarms a host has, and their names, no argument changes; their namespace and
# thresholds may be Outputs, known at deployment.
HOST_ALARMS: Final = tuple(s.suffix for s in host_alarms(DEFAULT_MONITORING, AlarmThresholds(), ""))


def relay_alarms(
    parent: pulumi.Resource,
    name: str,
    hosts: list[Host],
    balancer_alarm: pulumi.Output[AlarmSpec] | None,
    options: MonitoringOptions,
    checked: pulumi.Output[Checked],
    monitoring: pulumi.Output[Monitoring],
    tags: pulumi.Input[Mapping[str, str]],
    partition: str,
    region: str,
) -> pulumi.Input[str] | None:
    """Each host's alarms and its recovery and reboot alarms, the balancer's; the topic
    they notify.

    With alarms false only the recovery and reboot alarms remain: they repair, they do not
    notify."""
    child = pulumi.ResourceOptions(parent=parent)
    topic_arn = _alarm_topic(parent, name, options, checked, tags, partition, region)
    notify = [] if topic_arn is None else [topic_arn]
    recover = recover_action(partition, region)
    reboot = reboot_action(partition, region)
    # A host's alarms come once it works: its setup has published a first sample by then,
    # so the silent alarm (missing data breaching) does not fire while it boots.
    specs: list[tuple[str, str, pulumi.Output[AlarmSpec], list[pulumi.Resource]]] = []
    for host in hosts:
        if options.alarms:
            checks = pulumi.Output.all(checked, monitoring, host.instance.id).apply(
                lambda values: {
                    spec.suffix: spec
                    for spec in host_alarms(values[1], _thresholds(values[0]), values[2])
                }
            )
            specs += [(host.name, suffix, checks[suffix], [host.ready]) for suffix in HOST_ALARMS]
        for suffix, spec in (
            (RECOVER_ALARM, host.instance.id.apply(lambda i: recovery_alarm(i, recover))),
            (REBOOT_ALARM, host.instance.id.apply(lambda i: reboot_alarm(i, reboot))),
        ):
            specs.append((host.name, suffix, spec, [host.ready]))
    if options.alarms and balancer_alarm is not None:
        specs.append((name, UNHEALTHY_TARGETS, balancer_alarm, [host.ready for host in hosts]))
    for owner, suffix, spec, after in specs:
        aws.cloudwatch.MetricAlarm(
            f"{owner}-{suffix}-alarm",
            alarm_description=pulumi.Output.all(monitoring, spec).apply(
                lambda values: f"CMC relay {values[0].relay}: {values[1].description}"
            ),
            namespace=spec.namespace,
            metric_name=spec.metric_name,
            dimensions=spec.dimensions,
            statistic=spec.statistic,
            period=spec.period,
            evaluation_periods=spec.evaluation_periods,
            comparison_operator=spec.comparison_operator,
            threshold=spec.threshold,
            treat_missing_data=spec.treat_missing_data,
            alarm_actions=pulumi.Output.all(spec, *notify).apply(
                lambda values: [*values[0].repair_actions, *values[1:]]
            ),
            ok_actions=notify,
            tags=tags,
            opts=child.merge(pulumi.ResourceOptions(depends_on=after)),
        )
    return topic_arn


def _thresholds(checked: Checked) -> AlarmThresholds:
    thresholds = checked.options.monitoring.thresholds
    assert thresholds is not None  # checked: every value is known
    return thresholds


def _alarm_topic(
    parent: pulumi.Resource,
    name: str,
    options: MonitoringOptions,
    checked: pulumi.Output[Checked],
    tags: pulumi.Input[Mapping[str, str]],
    partition: str,
    region: str,
) -> pulumi.Input[str] | None:
    """alarm_topic_arn, or a new topic with alarm_email subscribed; None: nobody is told."""
    if not options.alarms:
        return None
    if options.alarm_topic_arn is not None:
        return checked.apply(lambda c: str(c.options.monitoring.alarm_topic_arn))
    if options.alarm_email is None:
        return None
    child = pulumi.ResourceOptions(parent=parent)
    account_id = aws.get_caller_identity(opts=pulumi.InvokeOptions(parent=parent)).account_id
    # Encrypted with a key of its own: CloudWatch cannot publish with AWS's managed one.
    key_policy = alarm_topic_key_policy(partition, account_id, region, f"{name}-")
    key = aws.kms.Key(
        f"{name}-alarms",
        description=f"CMC relay {name}: the alarm topic",
        enable_key_rotation=True,
        policy=json.dumps(key_policy),
        tags=tags,
        opts=child,
    )
    topic = aws.sns.Topic(f"{name}-alarms", kms_master_key_id=key.arn, tags=tags, opts=child)
    # AWS mails a confirmation link first: no alarm reaches the address until it is clicked.
    aws.sns.TopicSubscription(
        f"{name}-alarms-email",
        topic=topic.arn,
        protocol="email",
        endpoint=checked.apply(lambda c: c.options.monitoring.alarm_email),
        opts=child,
    )
    return topic.arn


def relay_dashboard(
    parent: pulumi.Resource,
    name: str,
    hosts: list[Host],
    monitoring: pulumi.Output[Monitoring],
    relay: str,
    partition: str,
    region: str,
) -> pulumi.Output[str]:
    """The relay's dashboard, graphs per host; its console URL."""
    board = aws.cloudwatch.Dashboard(
        f"{name}-dashboard",
        dashboard_name=dashboard_name(relay),
        dashboard_body=pulumi.Output.all(monitoring, *[host.instance.id for host in hosts]).apply(
            lambda values: json.dumps(dashboard_body(values[0], values[1:], region))
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return board.dashboard_name.apply(
        lambda board_name: dashboard_url(partition, region, board_name)
    )
