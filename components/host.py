"""One relay host: its instance, queue volume and sending IP, and the commands run against it
(the bundle's apply, the verification, the drain and the queue guard)."""

import sys
from collections.abc import Mapping
from typing import Final

import pulumi
import pulumi_aws as aws
from pulumi_command import local, remote

from cmc_relay.components import verification
from cmc_relay.components.fleet import Checked, Fleet, Host, resource_tags
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.render import QUEUE_DEVICE, pack_user_data

# Each instance's place among the hosts, which cmc-relay-reboot reads from instance metadata
# to take its turn in the maintenance window (the hosts share one payload).
HOST_INDEX_TAG: Final = "cmc-relay-host-index"


def host_name(name: str, index: int) -> str:
    """The first host keeps the single host's names; the others are numbered."""
    return name if index == 0 else f"{name}-{index}"


def relay_host(
    parent: pulumi.Resource,
    name: str,
    index: int,
    fleet: Fleet,
    subnet_id: pulumi.Input[str],
    after: list[pulumi.Resource],
) -> Host:
    """One relay host: the instance, its sending IP, its verification and its drain."""
    options = fleet.options
    child = pulumi.ResourceOptions(parent=parent)
    tags = resource_tags(fleet.checked, name)
    # With a maintenance window the host reads its index tag from instance metadata;
    # without one, nothing changes for existing hosts (both are in-place updates).
    windowed = fleet.args.get("reboot_window") is not None
    instance = aws.ec2.Instance(
        f"{name}-instance",
        ami=fleet.ami,
        instance_type=fleet.checked.apply(lambda c: c.options.instance_type),
        subnet_id=subnet_id,
        vpc_security_group_ids=[fleet.security_group.id],
        iam_instance_profile=fleet.profile.name,
        user_data_base64=fleet.user_data.apply(pack_user_data),
        user_data_replace_on_change=True,
        metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
            http_endpoint="enabled",
            http_tokens="required",
            http_put_response_hop_limit=1,
            instance_metadata_tags="enabled" if windowed else None,
        ),
        root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(volume_type="gp3", encrypted=True),
        tags=tags.apply(lambda t: {**t, HOST_INDEX_TAG: str(index)}) if windowed else tags,
        volume_tags=tags,
        # A draining host must be gone before its replacement takes its Elastic IP (the
        # drain delivers through it) or shares its NAT address's sessions. Otherwise left
        # unset, as it always was, for the engine and provider to decide.
        opts=child.merge(
            pulumi.ResourceOptions(
                depends_on=[*after, *fleet.payload],  # the bootstrap reads it at boot
                delete_before_replace=options.drain_on_delete or None,
            )
        ),
    )
    queue = _queue_volume(parent, name, fleet.checked, subnet_id, instance, tags)
    elastic_ip = association = None
    if options.egress == "eip":
        # Separate from the instance, so the sending IP survives the instance's replacement.
        elastic_ip = aws.ec2.Eip(f"{name}-eip", domain="vpc", tags=tags, opts=child)
        association = aws.ec2.EipAssociation(
            f"{name}-eip-association",
            allocation_id=elastic_ip.allocation_id,
            # The attachment's instance, not the instance's: the address moves to a new
            # host once it has the queue, and leaves the old one before it stops.
            instance_id=queue.instance_id,
            opts=child,
        )
    # The host can be reached at its address, with its permissions and its queue.
    reachable = [instance, queue, *([association] if association else []), *fleet.policies]
    address = elastic_ip.public_ip if elastic_ip else instance.private_ip
    needs = [*reachable, *fleet.egress_rules]
    guard = _queue_guard(parent, name, fleet, instance, needs)
    connection = _ssh_connection(fleet, address)
    apply = _apply(parent, name, fleet, instance, connection, after=reachable)
    verified_after = [*reachable, *([apply] if apply else [])]
    return Host(
        name,
        instance,
        queue,
        elastic_ip,
        apply,
        _verification(parent, name, fleet, instance, connection, after=verified_after),
        # The drain delivers the queue before the guard looks at it.
        _drain(parent, name, fleet, instance, needs=[*needs, guard]),
    )


def verification_reports(hosts: list[Host]) -> pulumi.Input[str] | None:
    """The verifier's report, or with several hosts a JSON list of theirs in host order."""
    reports = [host.verification.stdout for host in hosts if host.verification is not None]
    if not reports:
        return None
    if len(reports) == 1:
        return reports[0]
    return pulumi.Output.all(*reports).apply(lambda texts: f"[{', '.join(texts)}]")


def _queue_volume(
    parent: pulumi.Resource,
    name: str,
    checked: pulumi.Output[Checked],
    subnet_id: pulumi.Input[str],
    instance: aws.ec2.Instance,
    tags: pulumi.Output[Mapping[str, str]],
) -> aws.ec2.VolumeAttachment:
    """The host's Postfix queue on an EBS volume of its own, which outlives the instance:
    a replacement host gets the volume with the mail the old one had queued.

    The attachment is replaced with the instance, old one first: EC2 stops the old host
    (Postfix stops, the file system is unmounted) and detaches the volume, then attaches
    it to the new host, whose setup mounts it before Postfix starts. What reaches the host
    through the attachment's instance_id (its address, its balancer target) is deleted
    before the old attachment and created after the new one.
    """
    child = pulumi.ResourceOptions(parent=parent)
    subnet = aws.ec2.get_subnet_output(id=subnet_id, opts=pulumi.InvokeOutputOptions(parent=parent))
    volume = aws.ebs.Volume(
        f"{name}-queue",
        availability_zone=subnet.availability_zone,  # an EBS volume never leaves its AZ
        size=checked.apply(lambda c: c.options.queue_volume_gb),
        type="gp3",
        encrypted=True,  # with the account's EBS key, as the root volume
        tags=tags.apply(lambda t: {**t, "Name": f"{name}-queue"}),
        opts=child,
    )
    return aws.ec2.VolumeAttachment(
        f"{name}-queue-attachment",
        device_name=QUEUE_DEVICE,
        volume_id=volume.id,
        instance_id=instance.id,
        stop_instance_before_detaching=True,
        opts=child.merge(pulumi.ResourceOptions(delete_before_replace=True)),
    )


def _ssh_connection(fleet: Fleet, address: pulumi.Output[str]) -> remote.ConnectionArgs | None:
    """How ssh verification and apply reach the host; None for the other modes."""
    if fleet.options.verification != "ssh":
        return None
    return remote.ConnectionArgs(
        host=address,
        user=OS_PROFILES[fleet.options.os].login_user,
        private_key=pulumi.Output.secret(fleet.args["ssh_private_key"]),
        dial_error_limit=-1,  # until cloud-init has installed the key, or the timeout
    )


def _on_host(
    parent: pulumi.Resource,
    name: str,
    fleet: Fleet,
    instance: aws.ec2.Instance,
    create: pulumi.Input[str],
    connection: remote.ConnectionArgs | None,
    after: list[pulumi.Resource],
) -> local.Command | remote.Command:
    """A step run against the host once it is reachable with its permissions (``after``),
    again only when the instance or its bundle changes, and gone with the instance:
    ``create`` is the SSM driver run on this machine without a ``connection``, else the
    script run over ssh. A failed step fails the command, and so the deployment."""
    triggers = [instance.id, fleet.bundle_sha256]
    opts = pulumi.ResourceOptions(parent=parent, depends_on=after, deleted_with=instance)
    if connection is None:
        return local.Command(
            name, create=create, triggers=triggers, add_previous_output_in_env=False, opts=opts
        )
    return remote.Command(
        name,
        connection=connection,
        create=create,
        triggers=triggers,
        add_previous_output_in_env=False,
        opts=opts.merge(
            pulumi.ResourceOptions(
                custom_timeouts=pulumi.CustomTimeouts(create=verification.SSH_TIMEOUT)
            )
        ),
    )


def _apply(
    parent: pulumi.Resource,
    name: str,
    fleet: Fleet,
    instance: aws.ec2.Instance,
    connection: remote.ConnectionArgs | None,
    after: list[pulumi.Resource],
) -> local.Command | remote.Command | None:
    """Bring a running host to the current bundle in place (``cmc-relay-apply``): run again
    whenever the bundle changes, through the verification's channel. A host that cannot
    apply it, or fails the verifier with it, goes back to its previous configuration and
    fails the command, and so the deployment, naming the host. None for verification
    none (no channel: a new bundle replaces the hosts instead, see ``pinned``)."""
    if fleet.options.verification == "none":
        return None
    # After the pointer (fleet.payload, which the instance waits for) names the bundle.
    create: pulumi.Input[str]
    if connection is None:
        region = fleet.region
        create = pulumi.Output.all(instance.id, fleet.bundle_sha256).apply(
            lambda values: verification.apply_driver_command(
                sys.executable, values[0], region, values[1]
            )
        )
    else:
        create = fleet.bundle_sha256.apply(verification.ssh_apply_script)
    return _on_host(parent, f"{name}-apply", fleet, instance, create, connection, after)


def _verification(
    parent: pulumi.Resource,
    name: str,
    fleet: Fleet,
    instance: aws.ec2.Instance,
    connection: remote.ConnectionArgs | None,
    after: list[pulumi.Resource],
) -> local.Command | remote.Command | None:
    """Run the on-host verifier once the host is up, with the current bundle (``after``):
    the command whose stdout is the report, or None for ``none``.

    A failed check fails the command, and so the deployment.
    """
    if fleet.options.verification == "none":
        return None
    create: pulumi.Input[str]
    if connection is None:
        region = fleet.region
        # The interpreter running this program has boto3 (a runtime dependency).
        create = instance.id.apply(
            lambda instance_id: verification.ssm_driver_command(sys.executable, instance_id, region)
        )
    else:
        ready = _on_host(
            parent,
            f"{name}-ssh-ready",
            fleet,
            instance,
            verification.SSH_READY_SCRIPT,
            connection,
            after,
        )
        after = [*after, ready]
        create = fleet.checked.apply(
            lambda c: verification.ssh_verify_script(
                OS_PROFILES[c.options.os].login_user, str(c.options.ssh_public_key or "")
            )
        )
    return _on_host(parent, f"{name}-verify", fleet, instance, create, connection, after)


def _before_deletion(
    parent: pulumi.Resource,
    name: str,
    delete: pulumi.Output[str],
    needs: list[pulumi.Resource],
    triggers: list[pulumi.Input[str]] | None = None,
) -> local.Command:
    """A command run on this machine when it is deleted, deleted itself before what it
    ``needs`` (the host, its queue, its address, its permissions, its way out to the
    service): when it fails, the deletion fails and the host stays."""
    return local.Command(
        name,
        delete=delete,
        triggers=triggers,
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=needs),
    )


def _queue_guard(
    parent: pulumi.Resource,
    name: str,
    fleet: Fleet,
    instance: aws.ec2.Instance,
    needs: list[pulumi.Resource],
) -> local.Command:
    """Before a host and its queue volume go for good (destroy, scale-in), the queue must
    be empty, or discard_queue_on_destroy set: the deletion fails otherwise, naming the
    count. Never replaced (no triggers): a replacement host takes the volume with its
    mail, and the command's new delete names the new instance."""
    region = fleet.region
    check = pulumi.Output.all(instance.id, fleet.checked).apply(
        lambda values: verification.queue_check_command(
            sys.executable, values[0], region, values[1].options.discard_queue_on_destroy
        )
    )
    return _before_deletion(parent, f"{name}-queue-guard", check, needs)


def _drain(
    parent: pulumi.Resource,
    name: str,
    fleet: Fleet,
    instance: aws.ec2.Instance,
    needs: list[pulumi.Resource],
) -> local.Command | None:
    """Before the host is deleted (scale-in, replacement, destroy) it stops accepting mail
    and delivers its queue, run through Systems Manager like the verifier. A drain that
    fails or times out fails the deletion: the host stays, with its mail.

    The drain script ships in the payload exactly when this command exists, so the command
    never goes while its host stays: turning drain_on_delete off replaces the hosts too.
    """
    if not fleet.options.drain_on_delete:
        return None
    region = fleet.region
    drain = pulumi.Output.all(instance.id, fleet.checked).apply(
        lambda values: verification.drain_driver_command(
            sys.executable, values[0], region, values[1].options.drain_timeout_seconds
        )
    )
    # Replaced with the instance, so the old host drains before it goes; not deleted_with
    # it, which would skip the drain.
    return _before_deletion(parent, f"{name}-drain", drain, needs, triggers=[instance.id])
