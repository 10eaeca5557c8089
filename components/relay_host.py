"""RelayHost: EC2 Postfix relays to Customers Mail Cloud, as a Pulumi component.

One host, or with ``replicas`` > 1 one host per subnet behind an internal Network Load
Balancer. The first host keeps the single host's resource names (``<name>-instance``, ...), so
a stack grows without replacing it; host i > 0 is named ``<name>-<i>-...``.

This module is the resource graph and what every host shares (the credentials secret, the
payload bucket, the instance profile, the image pin); the parts are plain functions taking the
component as parent: ``network.py`` (security groups, subnets, balancer, DNS record),
``host.py`` (one host and the commands run against it), ``alarms.py`` (alarms, topic,
dashboard), sharing the types of ``fleet.py``.

No ``from __future__ import annotations`` here: Pulumi's schema analyzer (the component used
from other languages, ``components/provider.py``) reads the annotations as live types.
"""

import base64
import json
import re
from collections.abc import Mapping
from typing import Final

import pulumi
import pulumi_aws as aws
from pulumi_command import local

from cmc_relay.components.alarms import monitoring_role_policy, relay_alarms, relay_dashboard
from cmc_relay.components.args import HostOptions, RelayHostArgs, check_args
from cmc_relay.components.fleet import (
    Checked,
    Fleet,
    Host,
    checked_args,
    plain_list,
    resource_tags,
)
from cmc_relay.components.host import host_name, relay_host, verification_reports
from cmc_relay.components.image import image_pin_name, pin_command, pinned_image
from cmc_relay.components.monitoring import (
    mail_log_group,
    relay_dimension,
    relay_monitoring,
    unhealthy_targets_alarm,
)
from cmc_relay.components.network import (
    SMTP_PORT,
    balancer,
    endpoint_record,
    record_name,
    security_group,
    subnets,
)
from cmc_relay.components.policies import (
    EC2_ASSUME_ROLE_POLICY,
    bundle_read_policy,
    secret_read_policy,
    ssm_agent_policy,
    tls_only_bucket_policy,
)
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.render import (
    POINTER_KEY,
    QUEUE_DEVICE,
    Bundle,
    BundleStore,
    render_bundle,
    render_user_data,
)
from cmc_relay.userdata.settings import DEFAULT_HOST_NAME, secret_region

TYPE_TOKEN: Final = "cmc-relay:index:RelayHost"
_NOT_IN_BUCKET_NAME: Final = re.compile(r"[^a-z0-9-]+")


def payload_bucket_prefix(name: str) -> str:
    """S3 takes bucket names of lower-case letters, digits and hyphens only, and a prefix of at
    most 37 characters (AWS adds a unique suffix); a component may be named ``Relay_1``."""
    base = _NOT_IN_BUCKET_NAME.sub("-", name.lower()).strip("-")[:28] or "relay"
    return f"{base}-payload-"


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
        tags = resource_tags(checked, name)
        # A host name outside the user's zone stops here, before any resource, when both are
        # known; else when they are.
        host = args.get("host_name", DEFAULT_HOST_NAME)
        name_in_zone = record_name(self, options.dns_zone, host)
        relay = relay_dimension(pulumi.get_project(), pulumi.get_stack(), name)
        monitoring = checked.apply(
            lambda c: relay_monitoring(str(c.options.monitoring.namespace), relay)
        )
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-mail-log",
            name=mail_log_group(relay),
            retention_in_days=checked.apply(lambda c: c.options.monitoring.log_retention_days),
            kms_key_id=checked.apply(lambda c: c.options.monitoring.log_kms_key_arn),
            tags=tags,
            opts=child,
        )

        secret_arn = self._credentials_secret(name, args, options, checked, tags, child)
        group, egress_rules = security_group(
            self, name, args, options, checked, OS_PROFILES[options.os].package_ports, tags
        )
        drain = options.drain_on_delete
        # Every file of the host; a change reaches running hosts in place (host.py's apply).
        bundle = pulumi.Output.all(secret_arn, checked, monitoring).apply(
            lambda values: render_bundle(
                values[1].settings,
                checked_secret_arn(values[0]) if values[0] is not None else None,
                drain,
                monitoring=values[2],
                queue_device=QUEUE_DEVICE,
            )
        )
        bucket, pointer = self._payload(name, bundle, tags, child)
        profile, policies, payload_policy = self._instance_profile(
            name, secret_arn, bucket.arn, options, checked, tags, child
        )
        policies.append(monitoring_role_policy(self, name, profile, monitoring, log_group))
        # The provider's region, where the instances are.
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
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
        seed = options.ami_id or self._latest_image(options)
        latest_image = None if options.ami_id else seed
        image = self._image_pin(name, options, checked, seed)
        fleet = Fleet(
            args,
            options,
            checked,
            region,
            options.ami_id or image,
            group,
            egress_rules,
            profile,
            policies,
            [pointer, payload_policy],
            user_data,
            bundle.sha256,
        )
        host_subnets, subnet_ids = subnets(args, options.replicas)
        hosts: list[Host] = []
        for index, subnet_id in enumerate(host_subnets):
            # Each host waits until the one before works: a bad payload stops at the first
            # host, and replacements roll through the hosts one at a time.
            after = [hosts[-1].ready] if hosts else []
            hosts.append(relay_host(self, host_name(name, index), index, fleet, subnet_id, after))

        first = hosts[0]
        balancer_alarm = load_balancer = None
        if options.replicas > 1:
            load_balancer, targets = balancer(self, name, fleet, subnet_ids, hosts, tags)
            address = load_balancer.dns_name
            balancer_alarm = pulumi.Output.all(load_balancer.arn_suffix, targets.arn_suffix).apply(
                lambda suffixes: unhealthy_targets_alarm(*suffixes)
            )
        else:
            address = first.instance.private_ip
        record = endpoint_record(self, name, fleet, name_in_zone, hosts, load_balancer, tags)
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
        self.verification_report = pulumi.Output.from_input(verification_reports(hosts))
        self.log_group_name = log_group.name
        partition = aws.get_partition(opts=pulumi.InvokeOptions(parent=self)).partition
        self.alarm_topic_arn = pulumi.Output.from_input(
            relay_alarms(
                self,
                name,
                hosts,
                balancer_alarm,
                options.monitoring,
                checked,
                monitoring,
                tags,
                partition,
                region,
            )
        )
        self.dashboard_url = relay_dashboard(
            self, name, hosts, monitoring, relay, partition, region
        )
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


def checked_secret_arn(arn: str) -> str:
    """A secret ARN known only at deployment time gets the same check as a literal one."""
    secret_region(arn)
    return arn
