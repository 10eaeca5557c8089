"""What ``pulumi up`` would do to a stack after a change, reasoned out under mocks.

The engine cannot run here: the stack program runs twice under mocks (before and after the
change), each resource's inputs are compared, and every changed input is classified with the
providers' own rules, written down below with their source:

- an input in ``REPLACE_INPUTS`` of its type forces a replacement (Terraform's ``ForceNew``,
  which the Pulumi AWS provider bridges as is);
- an input in ``STOP_START_INPUTS`` is updated in place, the instance stopped and started;
- any other changed input is an update in place;
- pulumi-command: a change of ``triggers`` replaces the command (its create runs again), a
  change of ``create`` updates it (create runs again, there being no update command), a
  change of ``delete`` only is stored.

A replaced resource gets a new id: every input that names its id (the mocks' ``<name>-id``)
changes too, and is classified in turn, until nothing more changes. A resource type whose
inputs change but which has no row in ``REPLACE_INPUTS`` stops the comparison: the table
must say what it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from tests.pulumi_harness import Recorder, Registered, strings_in

# Sources: the provider's resource schemas, terraform-provider-aws (which pulumi-aws bridges),
# internal/service/<service>/<resource>.go, ``ForceNew: true`` (read at commit 0015dfcd,
# hashicorp/terraform-provider-aws); for the instance, ``user_data``/``user_data_base64`` are
# ``ForceNewIf(user_data_replace_on_change)``, and ``instance_type`` has no ForceNew: "Updates
# to this field will trigger a stop/start of the EC2 instance" (pulumi-aws docs, Instance,
# instanceType). Nested blocks are written ``block.field``.
REPLACE_INPUTS: Final[dict[str, frozenset[str]]] = {
    # internal/service/ec2/ec2_instance.go
    "aws:ec2/instance:Instance": frozenset(
        {
            "ami",
            "associatePublicIpAddress",
            "availabilityZone",
            "keyName",
            "privateIp",
            "subnetId",
            "securityGroups",
            "tenancy",
            "hibernation",
            "ebsOptimized",
            "placementGroup",
            "ipv6Addresses",
            "ipv6AddressCount",
            "launchTemplate",
            "rootBlockDevice.encrypted",
            "rootBlockDevice.kmsKeyId",
            "userDataBase64",  # replaced: userDataReplaceOnChange is set (checked below)
        }
    ),
    # internal/service/s3/bucket.go: bucket, bucket_prefix ForceNew
    "aws:s3/bucket:Bucket": frozenset({"bucket", "bucketPrefix"}),
    # internal/service/s3/object.go: bucket, key ForceNew; content, tags update in place
    "aws:s3/bucketObjectv2:BucketObjectv2": frozenset({"bucket", "key"}),
    # internal/service/s3/bucket_versioning.go, bucket_public_access_block.go,
    # bucket_policy.go: bucket ForceNew
    "aws:s3/bucketVersioning:BucketVersioning": frozenset({"bucket"}),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": frozenset({"bucket"}),
    "aws:s3/bucketPolicy:BucketPolicy": frozenset({"bucket"}),
    # internal/service/iam/role.go: name, name_prefix ForceNew
    "aws:iam/role:Role": frozenset({"name", "namePrefix"}),
    # internal/service/iam/role_policy.go: name, name_prefix, role ForceNew
    "aws:iam/rolePolicy:RolePolicy": frozenset({"name", "namePrefix", "role"}),
    # internal/service/iam/role_policy_attachment.go: role, policy_arn ForceNew
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": frozenset({"role", "policyArn"}),
    # internal/service/iam/instance_profile.go: name, name_prefix ForceNew
    "aws:iam/instanceProfile:InstanceProfile": frozenset({"name", "namePrefix"}),
    # internal/service/ec2/vpc_security_group.go: name, name_prefix, description, vpc_id
    "aws:ec2/securityGroup:SecurityGroup": frozenset(
        {"name", "namePrefix", "description", "vpcId"}
    ),
    # internal/service/ec2/vpc_security_group_ingress_rule.go (and egress): security_group_id
    # RequiresReplace; the rule's own fields update in place
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": frozenset({"securityGroupId"}),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": frozenset({"securityGroupId"}),
    # internal/service/ec2/ec2_eip.go: domain (vpc), network_border_group ForceNew
    "aws:ec2/eip:Eip": frozenset({"domain", "vpc", "networkBorderGroup"}),
    # internal/service/ec2/ec2_eip_association.go: every argument ForceNew
    "aws:ec2/eipAssociation:EipAssociation": frozenset(
        {"allocationId", "instanceId", "networkInterfaceId", "privateIpAddress", "publicIp"}
    ),
    # internal/service/secretsmanager/secret.go: name, name_prefix ForceNew
    "aws:secretsmanager/secret:Secret": frozenset({"name", "namePrefix"}),
    # internal/service/secretsmanager/secret_version.go: secret_id ForceNew (the value updates)
    "aws:secretsmanager/secretVersion:SecretVersion": frozenset({"secretId"}),
    # internal/service/logs/group.go: name, name_prefix ForceNew (retention, kms key update)
    "aws:cloudwatch/logGroup:LogGroup": frozenset({"name", "namePrefix"}),
    # internal/service/cloudwatch/metric_alarm.go: alarm_name ForceNew
    "aws:cloudwatch/metricAlarm:MetricAlarm": frozenset({"name"}),
    # internal/service/cloudwatch/dashboard.go: dashboard_name ForceNew
    "aws:cloudwatch/dashboard:Dashboard": frozenset({"dashboardName"}),
    # internal/service/sns/topic.go: name ForceNew; topic_subscription.go: endpoint,
    # protocol, topic_arn ForceNew
    "aws:sns/topic:Topic": frozenset({"name", "namePrefix", "fifoTopic"}),
    "aws:sns/topicSubscription:TopicSubscription": frozenset({"endpoint", "protocol", "topic"}),
    # internal/service/elbv2/load_balancer.go: name, internal, load_balancer_type ForceNew
    "aws:lb/loadBalancer:LoadBalancer": frozenset(
        {"name", "namePrefix", "internal", "loadBalancerType"}
    ),
    # internal/service/elbv2/target_group.go: name, port, protocol, vpc_id, target_type
    "aws:lb/targetGroup:TargetGroup": frozenset(
        {"name", "namePrefix", "port", "protocol", "vpcId", "targetType"}
    ),
    "aws:lb/listener:Listener": frozenset({"loadBalancerArn"}),
    # internal/service/ec2/ebs_volume.go (read at 0073593): availability_zone, encrypted,
    # kms_key_id, multi_attach_enabled, snapshot_id, outpost_arn ForceNew; size, type, iops,
    # throughput update in place (ModifyVolume)
    "aws:ebs/volume:Volume": frozenset(
        {
            "availabilityZone",
            "encrypted",
            "kmsKeyId",
            "multiAttachEnabled",
            "snapshotId",
            "outpostArn",
        }
    ),
    # internal/service/ec2/ec2_volume_attachment.go: device_name, instance_id, volume_id
    # ForceNew, the attachment's identity (read at 00655c1: its update is a no-op, so the
    # detach options change in state only)
    "aws:ec2/volumeAttachment:VolumeAttachment": frozenset(
        {"deviceName", "instanceId", "volumeId"}
    ),
    # internal/service/route53/zone.go: name, delegation_set_id ForceNew (the VPC association
    # and the comment update in place); record.go (read at 00655c1): zone_id, name ForceNew;
    # type, records, ttl and alias update in place (UPSERT)
    "aws:route53/zone:Zone": frozenset({"name", "delegationSetId"}),
    "aws:route53/record:Record": frozenset({"zoneId", "name"}),
    # internal/service/elbv2/target_group_attachment.go: every argument ForceNew
    "aws:lb/targetGroupAttachment:TargetGroupAttachment": frozenset(
        {"targetGroupArn", "targetId", "port", "availabilityZone"}
    ),
    # pulumi-command (provider/pkg/provider/local/command.go, remote/command.go): triggers
    # replace; create, update, delete, environment are updates
    "command:local:Command": frozenset({"triggers"}),
    "command:remote:Command": frozenset({"triggers", "connection"}),
}
# Updated in place with the instance stopped and started (its addresses stay).
STOP_START_INPUTS: Final[dict[str, frozenset[str]]] = {
    "aws:ec2/instance:Instance": frozenset({"instanceType"}),
}


class Action(Enum):
    SAME = "same"
    UPDATE = "update"
    STOP_START = "update, the instance stopped and started"
    REPLACE = "replace"
    CREATE = "create"
    DELETE = "delete"


@dataclass
class Step:
    """What happens to one resource, and the inputs that make it happen."""

    type: str
    name: str
    action: Action
    changed: set[str] = field(default_factory=set)


def flatten(inputs: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inputs as ``name`` or ``block.field`` paths (a nested object's fields, one level)."""
    flat: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, dict) and prefix == "":
            flat[name] = value
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[prefix + name] = value
    return flat


def changed_inputs(before: Registered, after: Registered) -> set[str]:
    old, new = flatten(before.inputs), flatten(after.inputs)
    return {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}


def action_of(type_token: str, changed: set[str], inputs: Mapping[str, Any]) -> Action:
    if not changed:
        return Action.SAME
    if type_token not in REPLACE_INPUTS:
        raise KeyError(f"{type_token}: changed {sorted(changed)}; REPLACE_INPUTS has no row")
    replacing = changed & REPLACE_INPUTS[type_token]
    stop_start = changed & STOP_START_INPUTS.get(type_token, frozenset())
    if "userDataBase64" in replacing and not inputs.get("userDataReplaceOnChange"):
        replacing.discard("userDataBase64")  # then the provider stops and starts the instance
        stop_start.add("userDataBase64")
    if replacing:
        return Action.REPLACE
    return Action.STOP_START if stop_start else Action.UPDATE


def key(resource: Registered) -> str:
    """``name:Type``: a name can be shared by resources of several types."""
    return f"{resource.name}:{resource.type.rsplit(':', 1)[-1]}"


def plan(before: Recorder, after: Recorder) -> dict[str, Step]:
    """Each resource's step, by ``key``."""
    old = {key(r): r for r in before.resources}
    new = {key(r): r for r in after.resources}
    steps: dict[str, Step] = {}
    for name in old.keys() - new.keys():
        steps[name] = Step(old[name].type, old[name].name, Action.DELETE)
    for name in new.keys() - old.keys():
        steps[name] = Step(new[name].type, new[name].name, Action.CREATE)
    for name in old.keys() & new.keys():
        changed = changed_inputs(old[name], new[name])
        steps[name] = Step(new[name].type, new[name].name, Action.SAME, changed)
    # A replaced (or new) resource's id is new: whatever names it changes too.
    settled = False
    while not settled:
        settled = True
        renewed = {f"{s.name}-id" for s in steps.values() if s.action is Action.REPLACE}
        for name, step in steps.items():
            if step.action in (Action.CREATE, Action.DELETE):
                continue
            inputs = flatten(new[name].inputs)
            naming = {k for k, v in inputs.items() if renewed & set(strings_in(v))}
            step.changed |= naming
            action = action_of(step.type, step.changed, new[name].inputs)
            if action is not step.action:
                step.action, settled = action, False
    return steps


def summary(steps: Mapping[str, Step]) -> dict[str, str]:
    """name -> action, for the resources that do something."""
    return {n: s.action.value for n, s in sorted(steps.items()) if s.action is not Action.SAME}
