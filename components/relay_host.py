"""RelayHost: EC2 Postfix relays to Customers Mail Cloud, as a Pulumi component.

One host, or with ``replicas`` > 1 one host per subnet behind an internal Network Load
Balancer. The first host keeps the single host's resource names (``<name>-instance``, ...), so
a stack grows without replacing it; host i > 0 is named ``<name>-<i>-...``.

No ``from __future__ import annotations`` here: Pulumi's schema analyzer (the component used
from other languages, ``components/provider.py``) reads the annotations as live types.
"""

import base64
import functools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

import pulumi
import pulumi_aws as aws
from pulumi_command import local, remote

from cmc_relay.components import verification
from cmc_relay.components.args import (
    DNS_ZONE_NONE,
    DNS_ZONE_PRIVATE,
    SECRET_ARGS,
    HostOptions,
    MonitoringOptions,
    RelayHostArgs,
    check_args,
    checked_dns_zone,
    checked_record_name,
    checked_subnet_ids,
    validate_args,
)
from cmc_relay.components.image import image_pin_name, pin_command, pinned_image
from cmc_relay.components.monitoring import (
    AlarmSpec,
    dashboard_body,
    dashboard_name,
    dashboard_url,
    host_alarms,
    reboot_action,
    reboot_alarm,
    recover_action,
    recovery_alarm,
    relay_monitoring,
    unhealthy_targets_alarm,
)
from cmc_relay.components.policies import (
    EC2_ASSUME_ROLE_POLICY,
    alarm_topic_key_policy,
    bundle_read_policy,
    monitoring_policy,
    secret_read_policy,
    ssm_agent_policy,
    tls_only_bucket_policy,
)
from cmc_relay.userdata.metrics import Monitoring
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.render import (
    POINTER_KEY,
    QUEUE_DEVICE,
    Bundle,
    BundleStore,
    pack_user_data,
    render_bundle,
    render_user_data,
)
from cmc_relay.userdata.settings import (
    DEFAULT_HOST_NAME,
    ConfigError,
    RelaySettings,
    secret_region,
)

TYPE_TOKEN: Final = "cmc-relay:index:RelayHost"
SMTP_PORT: Final = 25
SSH_PORT: Final = 22
_WORLD_IPV4: Final = "0.0.0.0/0"
# Seconds resolvers may keep hostName's address: after a single host's replacement, clients
# follow within a minute, and a busy application still asks only once a minute.
DNS_TTL: Final = 60
_NOT_IN_BUCKET_NAME: Final = re.compile(r"[^a-z0-9-]+")
# Each instance's place among the hosts, which cmc-relay-reboot reads from instance metadata
# to take its turn in the maintenance window (the hosts share one payload).
HOST_INDEX_TAG: Final = "cmc-relay-host-index"


# What the validation of values known only at deployment sees of a secret argument: it checks
# their presence only, and their values would make everything derived from it secret.
_SECRET_GIVEN: Final = "(secret)"


@dataclass(frozen=True)
class Checked:
    """Every argument checked together, once all are known: plain values only (a dataclass:
    Output.all would unpack a tuple)."""

    settings: RelaySettings
    options: HostOptions


def checked_args(args: RelayHostArgs) -> pulumi.Output[Checked]:
    """The arguments checked together once every value is known (at once when all are plain):
    values of other resources get the same checks, with the same messages, as literals, and a
    failed check fails the deployment. The resources take their values from here."""
    values = {name: _SECRET_GIVEN if name in SECRET_ARGS else v for name, v in args.items()}
    return pulumi.Output.all(**values).apply(lambda known: Checked(*validate_args(known)))


def counted_networks(
    checked: pulumi.Output[Checked], name: str, count: int
) -> list[pulumi.Output[str]]:
    """The ``count`` networks of ``allowed_cidrs`` or ``ssh_allowed_cidrs``, one rule each: as
    many as were given, so they must stay as many, each different, once known."""

    def network(index: int, values: Checked) -> str:
        networks = plain_list(
            values.settings.allowed_cidrs
            if name == "allowed_cidrs"
            else values.options.ssh_allowed_cidrs
        )
        if len(networks) != count:
            raise ConfigError(
                name,
                f"lists the same network more than once ({count} given, {len(networks)} "
                "different): each gets a security group rule of its own; list each once",
            )
        return str(networks[index])

    return [checked.apply(functools.partial(network, index)) for index in range(count)]


@dataclass(frozen=True)
class _Fleet:
    """What every host of one component shares."""

    args: RelayHostArgs
    options: HostOptions  # what decides the resources; their values come from ``checked``
    checked: pulumi.Output[Checked]
    ami: pulumi.Input[str]
    security_group: aws.ec2.SecurityGroup
    egress_rules: list[pulumi.Resource]
    profile: aws.iam.InstanceProfile
    policies: list[pulumi.Resource]
    payload: list[pulumi.Resource]  # the bundle's pointer in S3 and the role's right to read it
    user_data: pulumi.Output[str]
    bundle_sha256: pulumi.Output[str]  # the current bundle: applied in place when it changes


@dataclass(frozen=True)
class _Host:
    """One relay host's resources, as the rest of the component needs them."""

    name: str
    instance: aws.ec2.Instance
    queue: aws.ec2.VolumeAttachment  # the queue volume on this instance
    elastic_ip: aws.ec2.Eip | None
    apply: local.Command | remote.Command | None
    verification: local.Command | remote.Command | None
    drain: local.Command | None

    @property
    def ready(self) -> pulumi.Resource:
        """Done once the host works: its verification, or its instance if none runs."""
        return self.instance if self.verification is None else self.verification


def payload_bucket_prefix(name: str) -> str:
    """S3 takes bucket names of lower-case letters, digits and hyphens only, and a prefix of at
    most 37 characters (AWS adds a unique suffix); a component may be named ``Relay_1``."""
    base = _NOT_IN_BUCKET_NAME.sub("-", name.lower()).strip("-")[:28] or "relay"
    return f"{base}-payload-"


def host_name(name: str, index: int) -> str:
    """The first host keeps the single host's names; the others are numbered."""
    return name if index == 0 else f"{name}-{index}"


class RelayHost(pulumi.ComponentResource):
    """A Postfix relay host on EC2 that forwards the team's mail to Customers Mail Cloud."""

    instance_id: pulumi.Output[str]
    """The EC2 instance (the first host's, with replicas > 1)."""
    private_ip: pulumi.Output[str]
    """The instance's private address (the first host's, with replicas > 1)."""
    public_ip: pulumi.Output[str | None]
    """The (first host's) Elastic IP: a sending IP the service sees; none with egress nat."""
    sending_ips: pulumi.Output[list[str]]
    """Every sending IP the service sees (Elastic or NAT IPs): register them for Pro IP auth."""
    smtp_endpoint: pulumi.Output[str]
    """host:port that applications send to: host_name, which follows the host or balancer
    through replacements (with dns_zone none: the host's address or the balancer's name)."""
    security_group_id: pulumi.Output[str]
    """The hosts' security group (reference it from application groups)."""
    smtp_relay_host: pulumi.Output[str]
    """The service's next hop, [host]:port."""
    secret_arn: pulumi.Output[str | None]
    """The credentials secret's ARN (none with IP authentication)."""
    verification_report: pulumi.Output[str | None]
    """The on-host verifier's JSON report, a list of them with replicas > 1 (none if unverified)."""
    log_group_name: pulumi.Output[str]
    """The CloudWatch Logs group the hosts ship the mail log to."""
    dashboard_url: pulumi.Output[str]
    """The relay's CloudWatch dashboard in the AWS console."""
    alarm_topic_arn: pulumi.Output[str | None]
    """The SNS topic the alarms notify: alarm_topic_arn, or the one created for alarm_email."""
    image_id: pulumi.Output[str]
    """The image the hosts run: ami_id, or the official image pinned when they were created."""
    latest_image_id: pulumi.Output[str | None]
    """The newest official image of the OS now (none with ami_id): when it differs from
    image_id, a newer image is out; image_refresh moves the hosts to it."""

    def __init__(
        self, name: str, args: RelayHostArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        # Validate first: bad input must fail before any resource, the component included.
        # Values known only at deployment are checked then, all together (``checked``).
        _, options = check_args(args)
        super().__init__(TYPE_TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        checked = checked_args(args)
        tags = self._tags(checked, name)
        # A host name outside the user's zone stops here, before any resource, when both are
        # known; else when they are.
        host = args.get("host_name", DEFAULT_HOST_NAME)
        record_name = self._record_name(options.dns_zone, host)
        monitoring = relay_monitoring(
            options.monitoring.namespace, pulumi.get_project(), pulumi.get_stack(), name
        )
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-mail-log",
            name=monitoring.log_group,
            retention_in_days=checked.apply(lambda c: c.options.monitoring.log_retention_days),
            kms_key_id=checked.apply(lambda c: c.options.monitoring.log_kms_key_arn),
            tags=tags,
            opts=child,
        )

        secret_arn = self._credentials_secret(name, args, options, checked, tags, child)
        group, egress_rules = self._security_group(name, args, options, checked, tags, child)
        drain = options.drain_on_delete
        # Every file of the host; a change reaches running hosts in place (_apply).
        bundle = pulumi.Output.all(secret_arn, checked).apply(
            lambda values: render_bundle(
                values[1].settings,
                checked_secret_arn(values[0]) if values[0] is not None else None,
                drain,
                monitoring=monitoring,
                queue_device=QUEUE_DEVICE,
            )
        )
        bucket, pointer = self._payload(name, bundle, tags, child)
        profile, policies, payload_policy = self._instance_profile(
            name, secret_arn, bucket.arn, options, checked, tags, child
        )
        policies.append(self._monitoring_policy(name, profile, monitoring, log_group, child))
        region = self._region
        # Where the pointer is, and the OS's settings: a configuration change leaves it as it
        # is, so only a new bootstrap or OS setting replaces the hosts. Without a deployment
        # step reaching the hosts (verification none) it names the bundle too: a new one
        # replaces them.
        pinned = bundle.sha256 if options.verification == "none" else None
        user_data = pulumi.Output.all(bucket.bucket, pinned, checked).apply(
            lambda values: render_user_data(
                values[2].settings,
                values[2].options.ssh_public_key,
                drain,
                store=BundleStore(values[0], region),
                pinned=values[1],
            )
        )
        # ami_id skips the lookup: it may be an image the official filter does not find.
        # ami_id skips the lookup: it may be an image the official filter does not find.
        seed = options.ami_id or self._latest_image(options)
        latest_image = None if options.ami_id else seed
        image = self._image_pin(name, options, checked, seed)
        fleet = _Fleet(
            args,
            options,
            checked,
            options.ami_id or image,
            group,
            egress_rules,
            profile,
            policies,
            [pointer, payload_policy],
            user_data,
            bundle.sha256,
        )
        host_subnets, subnet_ids = self._subnets(args, options.replicas)
        hosts: list[_Host] = []
        for index, subnet_id in enumerate(host_subnets):
            # Each host waits until the one before works: a bad payload stops at the first
            # host, and replacements roll through the hosts one at a time.
            after = [hosts[-1].ready] if hosts else []
            hosts.append(self._host(host_name(name, index), index, fleet, subnet_id, after))

        first = hosts[0]
        balancer_alarm = balancer = None
        if options.replicas > 1:
            balancer, targets = self._balancer(name, fleet, subnet_ids, hosts, tags, child)
            address = balancer.dns_name
            balancer_alarm = unhealthy_targets_alarm(balancer.arn_suffix, targets.arn_suffix)
        else:
            address = first.instance.private_ip
        record = self._endpoint_record(name, fleet, record_name, hosts, balancer, tags, child)
        if record is not None:  # the name, once it resolves
            address = pulumi.Output.all(record.id, host).apply(lambda values: values[1])
        self.smtp_endpoint = address.apply(lambda host: f"{host}:{SMTP_PORT}")
        self.instance_id = first.instance.id
        self.private_ip = first.instance.private_ip
        self.public_ip = pulumi.Output.from_input(
            first.elastic_ip.public_ip if first.elastic_ip else None
        )
        self.sending_ips = (
            pulumi.Output.all(*[host.elastic_ip.public_ip for host in hosts if host.elastic_ip])
            if options.egress == "eip"
            else checked.apply(lambda c: list(dict.fromkeys(plain_list(c.options.nat_gateway_ips))))
        )
        self.security_group_id = group.id
        self.smtp_relay_host = checked.apply(lambda c: c.settings.next_hop)
        self.secret_arn = pulumi.Output.from_input(secret_arn)
        self.verification_report = pulumi.Output.from_input(self._reports(hosts))
        self.log_group_name = log_group.name
        self.alarm_topic_arn = pulumi.Output.from_input(
            self._alarms(name, hosts, balancer_alarm, options.monitoring, checked, monitoring, tags)
        )
        self.dashboard_url = self._dashboard(name, hosts, monitoring)
        self.image_id = pulumi.Output.from_input(fleet.ami)
        self.latest_image_id = pulumi.Output.from_input(latest_image)
        self.register_outputs(
            {
                "instance_id": self.instance_id,
                "private_ip": self.private_ip,
                "public_ip": self.public_ip,
                "smtp_endpoint": self.smtp_endpoint,
                "security_group_id": self.security_group_id,
                "smtp_relay_host": self.smtp_relay_host,
                "secret_arn": self.secret_arn,
                "verification_report": self.verification_report,
                "sending_ips": self.sending_ips,
                "log_group_name": self.log_group_name,
                "dashboard_url": self.dashboard_url,
                "alarm_topic_arn": self.alarm_topic_arn,
                "image_id": self.image_id,
                "latest_image_id": self.latest_image_id,
            }
        )

    def _host(
        self,
        name: str,
        index: int,
        fleet: _Fleet,
        subnet_id: pulumi.Input[str],
        after: list[pulumi.Resource],
    ) -> _Host:
        """One relay host: the instance, its sending IP, its verification and its drain."""
        options = fleet.options
        child = pulumi.ResourceOptions(parent=self)
        tags = self._tags(fleet.checked, name)
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
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", encrypted=True
            ),
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
        queue = self._queue_volume(name, fleet.checked, subnet_id, instance, tags)
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
        guard = self._queue_guard(name, fleet, instance, needs)
        connection = self._ssh_connection(fleet, address)
        apply = self._apply(name, fleet, instance, connection, after=reachable)
        verified_after = [*reachable, *([apply] if apply else [])]
        return _Host(
            name,
            instance,
            queue,
            elastic_ip,
            apply,
            self._verification(name, fleet, instance, connection, after=verified_after),
            # The drain delivers the queue before the guard looks at it.
            self._drain(name, fleet, instance, needs=[*needs, guard]),
        )

    def _queue_volume(
        self,
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
        child = pulumi.ResourceOptions(parent=self)
        subnet = aws.ec2.get_subnet_output(
            id=subnet_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
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

    def _queue_guard(
        self, name: str, fleet: _Fleet, instance: aws.ec2.Instance, needs: list[pulumi.Resource]
    ) -> local.Command:
        """Before a host and its queue volume go for good (destroy, scale-in), the queue must
        be empty, or discard_queue_on_destroy set: the deletion fails otherwise, naming the
        count. Never replaced (no triggers): a replacement host takes the volume with its
        mail, and the command's new delete names the new instance."""
        region = self._region
        return local.Command(
            f"{name}-queue-guard",
            delete=pulumi.Output.all(instance.id, fleet.checked).apply(
                lambda values: verification.queue_check_command(
                    sys.executable, values[0], region, values[1].options.discard_queue_on_destroy
                )
            ),
            add_previous_output_in_env=False,
            # Deleted before the host, its queue, its permissions and its way out.
            opts=pulumi.ResourceOptions(parent=self, depends_on=needs),
        )

    def _subnets(
        self, args: RelayHostArgs, replicas: int
    ) -> tuple[list[pulumi.Input[str]], pulumi.Input[Sequence[pulumi.Input[str]]]]:
        """Each host's subnet, and every subnet given (the balancer spans them)."""
        if not args.get("subnet_ids"):
            return [args["subnet_id"]], [args["subnet_id"]]
        # Checked again once known: ids from other resources cannot be compared before.
        subnet_ids = pulumi.Output.all(args["subnet_id"], *args["subnet_ids"]).apply(
            lambda ids: checked_subnet_ids(ids[0], ids[1:], replicas)
        )
        return [subnet_ids[index] for index in range(replicas)], subnet_ids

    def _credentials_secret(
        self,
        name: str,
        args: RelayHostArgs,
        options: HostOptions,
        checked: pulumi.Output[Checked],
        tags: pulumi.Input[Mapping[str, str]],
        child: pulumi.ResourceOptions,
    ) -> pulumi.Input[str] | None:
        """The given secret's ARN, or a new secret holding api_user/api_key; None for IP auth."""
        if args.get("credentials_secret_arn") is not None:
            return args["credentials_secret_arn"]
        if options.api_user is None:
            return None
        secret = aws.secretsmanager.Secret(
            f"{name}-credentials",
            description=f"SMTP AUTH credentials of the CMC relay host {name}",
            kms_key_id=checked.apply(lambda c: c.options.kms_key_arn),
            # Throwaway stacks delete it at once instead of leaving it scheduled for 30 days.
            recovery_window_in_days=checked.apply(lambda c: 0 if c.options.ephemeral else None),
            tags=tags,
            opts=child,
        )
        version = aws.secretsmanager.SecretVersion(
            f"{name}-credentials",
            secret_id=secret.id,
            secret_string=pulumi.Output.json_dumps(
                {
                    "username": checked.apply(lambda c: c.options.api_user),
                    "password": pulumi.Output.secret(args["api_key"]),
                }
            ),
            opts=child,
        )
        # The ARN is handed on only once a value exists to be read at boot.
        return pulumi.Output.all(secret.arn, version.id).apply(lambda values: values[0])

    def _security_group(
        self,
        name: str,
        args: RelayHostArgs,
        options: HostOptions,
        checked: pulumi.Output[Checked],
        tags: pulumi.Input[Mapping[str, str]],
        child: pulumi.ResourceOptions,
    ) -> tuple[aws.ec2.SecurityGroup, list[pulumi.Resource]]:
        """SMTP in from the allowed clients only (SSH too, for ssh verification only); out only
        to the service and HTTPS APIs. The group, and its outbound rules.

        DNS needs no rule: security groups do not filter traffic to the VPC resolver.
        """
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args["vpc_id"],
            description=f"CMC relay host {name}: SMTP from allowed clients only",
            tags=tags,
            opts=child,
        )
        self._smtp_ingress(f"{name}-smtp-in", group, args, options, checked, child)
        self._cidr_ingress(
            f"{name}-ssh-in",
            group,
            counted_networks(checked, "ssh_allowed_cidrs", len(options.ssh_allowed_cidrs)),
            SSH_PORT,
            "SSH for post-boot verification from",
            child,
        )
        egress = {
            options.smtp_port: "the service's SMTP relay port",
            **{
                port: "HTTPS APIs and package mirrors"
                for port in OS_PROFILES[options.os].package_ports
            },
        }
        rules: list[pulumi.Resource] = [
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-out-{port}",
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4=_WORLD_IPV4,
                description=purpose,
                opts=child,
            )
            for port, purpose in egress.items()
        ]
        return group, rules

    @staticmethod
    def _cidr_ingress(
        prefix: str,
        group: aws.ec2.SecurityGroup,
        cidrs: Sequence[pulumi.Output[str]],
        port: int,
        description: str,
        child: pulumi.ResourceOptions,
    ) -> None:
        """One rule per network (IPv4 or IPv6), named ``<prefix>-<index>``."""
        for index, cidr in enumerate(cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{prefix}-{index}",
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                description=pulumi.Output.concat(description, " ", cidr),
                cidr_ipv4=cidr.apply(lambda network: None if ":" in network else network),
                cidr_ipv6=cidr.apply(lambda network: network if ":" in network else None),
                opts=child,
            )

    def _smtp_ingress(
        self,
        prefix: str,
        group: aws.ec2.SecurityGroup,
        args: RelayHostArgs,
        options: HostOptions,
        checked: pulumi.Output[Checked],
        child: pulumi.ResourceOptions,
    ) -> None:
        """Port 25 into ``group`` from the allowed client networks and security groups."""
        cidrs = counted_networks(checked, "allowed_cidrs", len(options.allowed_cidrs))
        self._cidr_ingress(prefix, group, cidrs, SMTP_PORT, "SMTP from allowed network", child)
        for index, source_group in enumerate(args.get("allowed_security_group_ids", ())):
            aws.vpc.SecurityGroupIngressRule(
                f"{prefix}-sg-{index}",
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=SMTP_PORT,
                to_port=SMTP_PORT,
                referenced_security_group_id=source_group,
                description="SMTP from an allowed security group",
                opts=child,
            )

    def _balancer(
        self,
        name: str,
        fleet: _Fleet,
        subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]],
        hosts: list[_Host],
        tags: pulumi.Input[Mapping[str, str]],
        child: pulumi.ResourceOptions,
    ) -> tuple[aws.lb.LoadBalancer, aws.lb.TargetGroup]:
        """An internal Network Load Balancer passing port 25 through to the hosts, and its
        target group.

        Its security group admits the allowed clients; the hosts admit the balancer's group,
        which with client IP preservation is how AWS lets the traffic through (the hosts' rule
        for the clients would not), and Postfix still sees the client's own address for
        mynetworks. Health checks are subject to the balancer group's outbound rules, not its
        inbound ones, and reach the hosts through the same rule.
        """
        group = aws.ec2.SecurityGroup(
            f"{name}-nlb-sg",
            vpc_id=fleet.args["vpc_id"],
            description=f"CMC relay {name}: balancer, SMTP from allowed clients only",
            tags=tags,
            opts=child,
        )
        self._smtp_ingress(f"{name}-nlb-in", group, fleet.args, fleet.options, fleet.checked, child)
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-nlb-out",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=SMTP_PORT,
            to_port=SMTP_PORT,
            referenced_security_group_id=fleet.security_group.id,
            description="SMTP and health checks to the relay hosts",
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-smtp-in-nlb",
            security_group_id=fleet.security_group.id,
            ip_protocol="tcp",
            from_port=SMTP_PORT,
            to_port=SMTP_PORT,
            referenced_security_group_id=group.id,
            description="SMTP and health checks through the balancer",
            opts=child,
        )
        balancer = aws.lb.LoadBalancer(
            f"{name}-nlb",
            internal=True,
            load_balancer_type="network",
            subnets=subnet_ids,
            # Only at creation can a balancer get security groups.
            security_groups=[group.id],
            # A zone whose host is down or draining still forwards to the others at once.
            enable_cross_zone_load_balancing=True,
            tags=tags,
            opts=child,
        )
        targets = aws.lb.TargetGroup(
            f"{name}-nlb-targets",
            port=SMTP_PORT,
            protocol="TCP",
            target_type="instance",
            vpc_id=fleet.args["vpc_id"],
            preserve_client_ip="true",
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                protocol="TCP",
                port="traffic-port",
                interval=10,
                healthy_threshold=3,
                unhealthy_threshold=3,
            ),
            tags=tags,
            opts=child,
        )
        aws.lb.Listener(
            f"{name}-nlb-smtp",
            load_balancer_arn=balancer.arn,
            port=SMTP_PORT,
            protocol="TCP",
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=targets.arn)
            ],
            tags=tags,
            opts=child,
        )
        for host in hosts:
            aws.lb.TargetGroupAttachment(
                f"{host.name}-target",
                target_group_arn=targets.arn,
                # The attachment's instance, as for the Elastic IP: out of service before
                # the old host stops, in service once the new one has the queue and works.
                target_id=host.queue.instance_id,
                port=SMTP_PORT,
                # In service once the host works; out of it before the host drains.
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[host.ready, *([host.drain] if host.drain else [])]
                ),
            )
        return balancer, targets

    def _record_name(self, zone: pulumi.Input[str], host: pulumi.Input[str]) -> pulumi.Input[str]:
        """host_name, checked to be inside the user's zone (dns_zone an id) once it is looked
        up: at once for a zone id and a host name given as text, at deployment for either from
        a resource."""
        if zone in (DNS_ZONE_PRIVATE, DNS_ZONE_NONE):
            return host
        invoke = pulumi.InvokeOptions(parent=self)
        if isinstance(zone, str) and isinstance(host, str):
            return checked_record_name(host, aws.route53.get_zone(zone_id=zone, opts=invoke).name)
        zone_id = pulumi.Output.from_input(zone).apply(checked_dns_zone)
        found = aws.route53.get_zone_output(zone_id=zone_id, opts=invoke)
        return pulumi.Output.all(host, found.name).apply(
            lambda values: checked_record_name(values[0], values[1])
        )

    def _endpoint_record(
        self,
        name: str,
        fleet: _Fleet,
        record_name: pulumi.Input[str],
        hosts: list[_Host],
        balancer: aws.lb.LoadBalancer | None,
        tags: pulumi.Output[Mapping[str, str]],
        child: pulumi.ResourceOptions,
    ) -> aws.route53.Record | None:
        """host_name in DNS: an A record to the single host's private address, or an alias to
        the balancer; in a private hosted zone for host_name (associated with the VPC), in the
        user's zone, or nowhere (dns_zone none)."""
        zone = fleet.options.dns_zone
        if zone == DNS_ZONE_NONE:
            return None
        zone_id: pulumi.Input[str] = zone
        if zone == DNS_ZONE_PRIVATE:
            zone_id = aws.route53.Zone(
                f"{name}-dns-zone",
                name=fleet.args.get("host_name", DEFAULT_HOST_NAME),
                comment=f"CMC relay {name}: the name applications send to",
                vpcs=[aws.route53.ZoneVpcArgs(vpc_id=fleet.args["vpc_id"])],
                tags=tags,
                opts=child,
            ).zone_id
        if balancer is not None:
            # The balancer's name never changes; an alias takes its TTL (60 s for ELB).
            alias = aws.route53.RecordAliasArgs(
                name=balancer.dns_name,
                zone_id=balancer.zone_id,
                evaluate_target_health=False,  # one target: nothing to fail over to
            )
            return aws.route53.Record(
                f"{name}-dns",
                zone_id=zone_id,
                name=record_name,
                type="A",
                aliases=[alias],
                opts=child,
            )
        return aws.route53.Record(
            f"{name}-dns",
            zone_id=zone_id,
            name=record_name,
            type="A",
            ttl=DNS_TTL,
            records=[hosts[0].instance.private_ip],
            # A replacement host gets the name once it works, not while it boots.
            opts=child.merge(pulumi.ResourceOptions(depends_on=[hosts[0].ready])),
        )

    def _payload(
        self,
        name: str,
        bundle: pulumi.Output[Bundle],
        tags: pulumi.Input[Mapping[str, str]],
        child: pulumi.ResourceOptions,
    ) -> tuple[aws.s3.Bucket, aws.s3.BucketObjectv2]:
        """A private, versioned bucket holding the bundle under its hash-named key, and the
        pointer naming it (written once the bundle is there), which a host boots with."""
        bucket = aws.s3.Bucket(
            f"{name}-payload",
            bucket_prefix=payload_bucket_prefix(name),
            force_destroy=True,  # it only holds payloads the component generates
            tags=tags,
            opts=child,
        )
        private = aws.s3.BucketPublicAccessBlock(
            f"{name}-payload",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        # Every pointer and bundle a host was given stays readable as a version, after the
        # deployment moved on.
        aws.s3.BucketVersioning(
            f"{name}-payload",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status="Enabled"
            ),
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-payload",
            bucket=bucket.id,
            policy=bucket.arn.apply(lambda arn: json.dumps(tls_only_bucket_policy(arn))),
            opts=child.merge(pulumi.ResourceOptions(depends_on=[private])),
        )
        # A new bundle is a new object (its key is its hash): created before the pointer moves
        # to it, the old one deleted after. A host booting in between reads the pointer again
        # if its bundle is gone (cmc-relay-bootstrap).
        bundle_object = aws.s3.BucketObjectv2(
            f"{name}-payload",
            bucket=bucket.id,
            key=bundle.key,
            content_base64=bundle.data.apply(lambda data: base64.b64encode(data).decode()),
            content_type="application/gzip",
            tags=tags,
            opts=child,
        )
        pointer = aws.s3.BucketObjectv2(
            f"{name}-payload-pointer",
            bucket=bucket.id,
            key=POINTER_KEY,
            content=bundle.pointer,
            content_type="application/json",
            tags=tags,
            opts=child.merge(pulumi.ResourceOptions(depends_on=[bundle_object])),
        )
        return bucket, pointer

    def _instance_profile(
        self,
        name: str,
        secret_arn: pulumi.Input[str] | None,
        bucket_arn: pulumi.Output[str],
        options: HostOptions,
        checked: pulumi.Output[Checked],
        tags: pulumi.Input[Mapping[str, str]],
        child: pulumi.ResourceOptions,
    ) -> tuple[aws.iam.InstanceProfile, list[pulumi.Resource], aws.iam.RolePolicy]:
        """The instance's profile, the policies it needs before the host can be verified
        (reading the credentials secret and the inbound TLS certificate's, where there are),
        and the one it needs to boot: reading its bundles."""
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(EC2_ASSUME_ROLE_POLICY),
            description=f"CMC relay host {name}",
            tags=tags,
            opts=child,
        )
        policies: list[pulumi.Resource] = [
            aws.iam.RolePolicy(
                f"{name}-ssm-agent",
                role=role.id,
                policy=json.dumps(ssm_agent_policy()),
                opts=child,
            )
        ]
        if secret_arn is not None or options.inbound_tls_secret_arn is not None:
            policy = aws.iam.RolePolicy(
                f"{name}-read-credentials",
                role=role.id,
                policy=pulumi.Output.all(secret_arn, checked).apply(
                    lambda values: json.dumps(
                        secret_read_policy(
                            values[0],
                            values[1].options.kms_key_arn,
                            values[1].settings.inbound_tls_secret_arn,
                        )
                    )
                ),
                opts=child,
            )
            policies.append(policy)
        payload_policy = aws.iam.RolePolicy(
            f"{name}-read-payload",
            role=role.id,
            policy=bucket_arn.apply(lambda arn: json.dumps(bundle_read_policy(arn))),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)
        return profile, policies, payload_policy

    def _ssh_connection(
        self, fleet: _Fleet, address: pulumi.Output[str]
    ) -> remote.ConnectionArgs | None:
        """How ssh verification and apply reach the host; None for the other modes."""
        if fleet.options.verification != "ssh":
            return None
        return remote.ConnectionArgs(
            host=address,
            user=OS_PROFILES[fleet.options.os].login_user,
            private_key=pulumi.Output.secret(fleet.args["ssh_private_key"]),
            dial_error_limit=-1,  # until cloud-init has installed the key, or the timeout
        )

    def _apply(
        self,
        name: str,
        fleet: _Fleet,
        instance: aws.ec2.Instance,
        connection: remote.ConnectionArgs | None,
        after: list[pulumi.Resource],
    ) -> local.Command | remote.Command | None:
        """Bring a running host to the current bundle in place (``cmc-relay-apply``): run again
        whenever the bundle changes, through the verification's channel. A host that cannot
        apply it, or fails the verifier with it, goes back to its previous configuration and
        fails the command, and so the deployment, naming the host. None for verification
        none (no channel: a new bundle replaces the hosts instead, see ``pinned``)."""
        options = fleet.options
        if options.verification == "none":
            return None
        triggers = [instance.id, fleet.bundle_sha256]
        # After the pointer (fleet.payload, which the instance waits for) names the bundle.
        opts = pulumi.ResourceOptions(parent=self, depends_on=after, deleted_with=instance)
        if connection is None:
            region = self._region
            driver = pulumi.Output.all(instance.id, fleet.bundle_sha256).apply(
                lambda values: verification.apply_driver_command(
                    sys.executable, values[0], region, values[1]
                )
            )
            return local.Command(
                f"{name}-apply",
                create=driver,
                triggers=triggers,
                add_previous_output_in_env=False,
                opts=opts,
            )
        return remote.Command(
            f"{name}-apply",
            connection=connection,
            create=fleet.bundle_sha256.apply(verification.ssh_apply_script),
            triggers=triggers,
            add_previous_output_in_env=False,
            opts=opts.merge(
                pulumi.ResourceOptions(
                    custom_timeouts=pulumi.CustomTimeouts(create=verification.SSH_TIMEOUT)
                )
            ),
        )

    def _verification(
        self,
        name: str,
        fleet: _Fleet,
        instance: aws.ec2.Instance,
        connection: remote.ConnectionArgs | None,
        after: list[pulumi.Resource],
    ) -> local.Command | remote.Command | None:
        """Run the on-host verifier once the host is up: the command whose stdout is the report,
        or None for ``none``.

        A failed check fails the command, and so the deployment.
        """
        options = fleet.options
        if options.verification == "none":
            return None
        # Once the host is reachable at its address with its permissions and has the current
        # bundle (``after``), and again only when the instance or its bundle changes; gone
        # with the instance.
        opts = pulumi.ResourceOptions(parent=self, depends_on=after, deleted_with=instance)
        triggers = [instance.id, fleet.bundle_sha256]
        if connection is None:
            region = self._region
            # The interpreter running this program has boto3 (a runtime dependency).
            driver = instance.id.apply(
                lambda instance_id: verification.ssm_driver_command(
                    sys.executable, instance_id, region
                )
            )
            return local.Command(
                f"{name}-verify",
                create=driver,
                triggers=triggers,
                add_previous_output_in_env=False,
                opts=opts,
            )
        waited = opts.merge(
            pulumi.ResourceOptions(
                custom_timeouts=pulumi.CustomTimeouts(create=verification.SSH_TIMEOUT)
            )
        )
        ready = remote.Command(
            f"{name}-ssh-ready",
            connection=connection,
            create=verification.SSH_READY_SCRIPT,
            triggers=triggers,
            add_previous_output_in_env=False,
            opts=waited,
        )
        return remote.Command(
            f"{name}-verify",
            connection=connection,
            create=fleet.checked.apply(
                lambda c: verification.ssh_verify_script(
                    OS_PROFILES[c.options.os].login_user, str(c.options.ssh_public_key or "")
                )
            ),
            triggers=triggers,
            add_previous_output_in_env=False,
            opts=waited.merge(pulumi.ResourceOptions(depends_on=[ready])),
        )

    def _drain(
        self, name: str, fleet: _Fleet, instance: aws.ec2.Instance, needs: list[pulumi.Resource]
    ) -> local.Command | None:
        """Before the host is deleted (scale-in, replacement, destroy) it stops accepting mail
        and delivers its queue, run through Systems Manager like the verifier. A drain that
        fails or times out fails the deletion: the host stays, with its mail.

        The drain script ships in the payload exactly when this command exists, so the command
        never goes while its host stays: turning drain_on_delete off replaces the hosts too.
        """
        options = fleet.options
        if not options.drain_on_delete:
            return None
        region = self._region
        return local.Command(
            f"{name}-drain",
            delete=pulumi.Output.all(instance.id, fleet.checked).apply(
                lambda values: verification.drain_driver_command(
                    sys.executable, values[0], region, values[1].options.drain_timeout_seconds
                )
            ),
            # Replaced with the instance, so the old host drains before it goes; not
            # deleted_with it, which would skip the drain.
            triggers=[instance.id],
            add_previous_output_in_env=False,
            # Deleted before what the drain needs: the host, its address, its permissions and
            # its way out to the service.
            opts=pulumi.ResourceOptions(parent=self, depends_on=needs),
        )

    @staticmethod
    def _reports(hosts: list[_Host]) -> pulumi.Input[str] | None:
        """The verifier's report, or with several hosts a JSON list of theirs in host order."""
        reports = [host.verification.stdout for host in hosts if host.verification is not None]
        if not reports:
            return None
        if len(reports) == 1:
            return reports[0]
        return pulumi.Output.all(*reports).apply(lambda texts: f"[{', '.join(texts)}]")

    def _monitoring_policy(
        self,
        name: str,
        profile: aws.iam.InstanceProfile,
        monitoring: Monitoring,
        log_group: aws.cloudwatch.LogGroup,
        child: pulumi.ResourceOptions,
    ) -> aws.iam.RolePolicy:
        """Publishing the relay's metrics and shipping its mail log."""
        return aws.iam.RolePolicy(
            f"{name}-monitoring",
            role=profile.role,
            policy=log_group.arn.apply(
                lambda arn: json.dumps(monitoring_policy(monitoring.namespace, arn))
            ),
            opts=child,
        )

    def _alarms(
        self,
        name: str,
        hosts: list[_Host],
        balancer_alarm: AlarmSpec | None,
        options: MonitoringOptions,
        checked: pulumi.Output[Checked],
        monitoring: Monitoring,
        tags: pulumi.Input[Mapping[str, str]],
    ) -> pulumi.Input[str] | None:
        """Each host's alarms and its recovery and reboot alarms, the balancer's; the topic
        they notify.

        With alarms false only the recovery and reboot alarms remain: they repair, they do not
        notify."""
        child = pulumi.ResourceOptions(parent=self)
        topic_arn = self._alarm_topic(name, options, checked, tags, child)
        notify = [] if topic_arn is None else [topic_arn]
        recover = recover_action(self._partition, self._region)
        reboot = reboot_action(self._partition, self._region)
        # A host's alarms come once it works: its setup has published a first sample by then,
        # so the silent alarm (missing data breaching) does not fire while it boots.
        specs: list[tuple[str, AlarmSpec, list[pulumi.Resource]]] = []
        for host in hosts:
            if options.alarms:
                checks = host_alarms(monitoring, options.thresholds, host.instance.id)
                specs += [(host.name, spec, [host.ready]) for spec in checks]
            specs.append((host.name, recovery_alarm(host.instance.id, recover), [host.ready]))
            specs.append((host.name, reboot_alarm(host.instance.id, reboot), [host.ready]))
        if options.alarms and balancer_alarm is not None:
            specs.append((name, balancer_alarm, [host.ready for host in hosts]))
        for owner, spec, after in specs:
            aws.cloudwatch.MetricAlarm(
                f"{owner}-{spec.suffix}-alarm",
                alarm_description=f"CMC relay {monitoring.relay}: {spec.description}",
                namespace=spec.namespace,
                metric_name=spec.metric_name,
                dimensions=spec.dimensions,
                statistic=spec.statistic,
                period=spec.period,
                evaluation_periods=spec.evaluation_periods,
                comparison_operator=spec.comparison_operator,
                threshold=spec.threshold,
                treat_missing_data=spec.treat_missing_data,
                alarm_actions=[*spec.repair_actions, *notify],
                ok_actions=notify,
                tags=tags,
                opts=child.merge(pulumi.ResourceOptions(depends_on=after)),
            )
        return topic_arn

    def _alarm_topic(
        self,
        name: str,
        options: MonitoringOptions,
        checked: pulumi.Output[Checked],
        tags: pulumi.Input[Mapping[str, str]],
        child: pulumi.ResourceOptions,
    ) -> pulumi.Input[str] | None:
        """alarm_topic_arn, or a new topic with alarm_email subscribed; None: nobody is told."""
        if not options.alarms:
            return None
        if options.alarm_topic_arn is not None:
            return checked.apply(lambda c: str(c.options.monitoring.alarm_topic_arn))
        if options.alarm_email is None:
            return None
        # Encrypted with a key of its own: CloudWatch cannot publish with AWS's managed one.
        key_policy = alarm_topic_key_policy(
            self._partition, self._account_id, self._region, f"{name}-"
        )
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

    def _dashboard(
        self, name: str, hosts: list[_Host], monitoring: Monitoring
    ) -> pulumi.Output[str]:
        """The relay's dashboard, graphs per host; its console URL."""
        region = self._region
        dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard",
            dashboard_name=dashboard_name(monitoring),
            dashboard_body=pulumi.Output.all(*[host.instance.id for host in hosts]).apply(
                lambda ids: json.dumps(dashboard_body(monitoring, ids, region))
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        partition = self._partition
        return dashboard.dashboard_name.apply(lambda board: dashboard_url(partition, region, board))

    @functools.cached_property
    def _partition(self) -> str:
        return aws.get_partition(opts=pulumi.InvokeOptions(parent=self)).partition

    @functools.cached_property
    def _account_id(self) -> str:
        return aws.get_caller_identity(opts=pulumi.InvokeOptions(parent=self)).account_id

    @functools.cached_property
    def _region(self) -> str:
        """The provider's region, where the instances are: looked up once, when needed."""
        return aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region

    def _image_pin(
        self,
        name: str,
        options: HostOptions,
        checked: pulumi.Output[Checked],
        seed: pulumi.Input[str],
    ) -> pulumi.Output[str]:
        """The image the hosts run unless ami_id is given: ``seed`` when the pin is created
        (ami_id if set then, else the newest official image), then what the pin holds, until
        os, the architecture or image_refresh changes the pin's name (see components/image.py).

        A local command that only echoes the id: it runs on the deploying machine, needs no
        credentials and holds no secret, whatever the verification mode.
        """
        pin = local.Command(
            image_pin_name(name, options.os, options.architecture, options.image_refresh),
            # After the arguments' checks, as every resource: a bad one creates nothing.
            create=pulumi.Output.all(seed, checked).apply(lambda values: pin_command(values[0])),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["create"]),
        )
        # Read from its input as the state keeps it, not its stdout: known in a preview too.
        return pin.create.apply(lambda command: pinned_image(command or ""))

    def _latest_image(self, options: HostOptions) -> str:
        """The newest official image of the OS for the architecture, as published now."""
        image = OS_PROFILES[options.os].image
        return aws.ec2.get_ami(
            most_recent=True,
            owners=[image.owner],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[image.name(options.architecture)]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=[options.architecture]),
                aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
            ],
            opts=pulumi.InvokeOptions(parent=self),
        ).id

    @staticmethod
    def _tags(checked: pulumi.Output[Checked], name: str) -> pulumi.Output[Mapping[str, str]]:
        """The tags of a resource of its own name (``Name``) and the caller's."""
        return checked.apply(lambda c: {"Name": name, **cast(Mapping[str, str], c.options.tags)})


def plain_list(values: pulumi.Input[Sequence[pulumi.Input[str]]]) -> list[str]:
    """A list ``validate_args`` checked: plain strings, whatever its type allowed before."""
    return [str(value) for value in cast(Sequence[str], values)]


def checked_secret_arn(arn: str) -> str:
    """A secret ARN known only at deployment time gets the same check as a literal one."""
    secret_region(arn)
    return arn
