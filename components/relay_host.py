"""RelayHost: one EC2 Postfix relay to Customers Mail Cloud, as a Pulumi component.

No ``from __future__ import annotations`` here: Pulumi's schema analyzer (the component used
from other languages, ``components/provider.py``) reads the annotations as live types.
"""

import json
import sys
from dataclasses import dataclass
from typing import Final

import pulumi
import pulumi_aws as aws
from pulumi_command import local, remote

from components import verification
from components.args import HostOptions, RelayHostArgs, secret_region, validate_args
from components.policies import (
    EC2_ASSUME_ROLE_POLICY,
    secret_read_policy,
    ssm_managed_instance_policy_arn,
)
from userdata.render import OS_PROFILES, pack_user_data, render_user_data
from userdata.settings import RelaySettings

TYPE_TOKEN: Final = "cmc-relay:index:RelayHost"
SMTP_PORT: Final = 25
SSH_PORT: Final = 22
_WORLD_IPV4: Final = "0.0.0.0/0"


_DEBIAN_ARCH_NAMES: Final = {"x86_64": "amd64", "arm64": "arm64"}


@dataclass(frozen=True)
class ImageFilter:
    """Where the official image of an OS is published, and how its names spell architectures."""

    owner: str
    name_pattern: str
    arch_names: dict[str, str]

    def name(self, architecture: str) -> str:
        return self.name_pattern.format(arch=self.arch_names[architecture])


IMAGES: Final[dict[str, ImageFilter]] = {
    "al2023": ImageFilter(
        "amazon", "al2023-ami-2023.*-{arch}", {"x86_64": "x86_64", "arm64": "arm64"}
    ),
    "debian-12": ImageFilter("136693071363", "debian-12-{arch}-*", _DEBIAN_ARCH_NAMES),
    "ubuntu-24.04": ImageFilter(
        "099720109477",
        "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*",
        _DEBIAN_ARCH_NAMES,
    ),
}
# Package mirrors: Amazon Linux's are HTTPS only; Debian's and Ubuntu's EC2 mirrors use HTTP.
PACKAGE_PORTS: Final[dict[str, tuple[int, ...]]] = {
    "al2023": (443,),
    "debian-12": (80, 443),
    "ubuntu-24.04": (80, 443),
}


class RelayHost(pulumi.ComponentResource):
    """A Postfix relay host on EC2 that forwards the team's mail to Customers Mail Cloud."""

    instance_id: pulumi.Output[str]
    """The EC2 instance."""
    private_ip: pulumi.Output[str]
    """The instance's private address."""
    public_ip: pulumi.Output[str]
    """The Elastic IP: the sending IP the service sees (register it for Pro IP auth)."""
    smtp_endpoint: pulumi.Output[str]
    """host:port that applications send to (the private address, port 25)."""
    security_group_id: pulumi.Output[str]
    """The host's security group (reference it from application groups)."""
    smtp_relay_host: pulumi.Output[str]
    """The service's next hop, [host]:port."""
    secret_arn: pulumi.Output[str | None]
    """The credentials secret's ARN (none with IP authentication)."""
    verification_report: pulumi.Output[str | None]
    """The on-host verifier's JSON report {"ok": ..., "checks": [...]} (none if not verified)."""

    def __init__(
        self, name: str, args: RelayHostArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        # Validate first: bad input must fail before any resource, the component included.
        settings, options = validate_args(args)
        super().__init__(TYPE_TOKEN, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {"Name": name, **options.tags}

        secret_arn = self._credentials_secret(name, args, options, tags, child)
        security_group = self._security_group(name, args, settings, options, tags, child)
        profile, policies = self._instance_profile(name, secret_arn, options, tags, child)
        public_key = options.ssh_public_key
        user_data = (
            pulumi.Output.from_input(secret_arn).apply(
                lambda arn: render_user_data(settings, checked_secret_arn(arn), public_key)
            )
            if secret_arn is not None
            else pulumi.Output.from_input(render_user_data(settings, None, public_key))
        )
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=options.ami_id or self._image_id(settings, options),
            instance_type=options.instance_type,
            subnet_id=args["subnet_id"],
            vpc_security_group_ids=[security_group.id],
            iam_instance_profile=profile.name,
            user_data_base64=user_data.apply(pack_user_data),
            user_data_replace_on_change=True,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", encrypted=True
            ),
            tags=tags,
            volume_tags=tags,
            opts=child,
        )
        # Separate from the instance, so the sending IP survives the instance's replacement.
        elastic_ip = aws.ec2.Eip(f"{name}-eip", domain="vpc", tags=tags, opts=child)
        association = aws.ec2.EipAssociation(
            f"{name}-eip-association",
            allocation_id=elastic_ip.allocation_id,
            instance_id=instance.id,
            opts=child,
        )
        report = self._verification(
            name,
            args,
            settings,
            options,
            instance,
            elastic_ip,
            user_data,
            after=[instance, association, *policies],
        )

        self.instance_id = instance.id
        self.private_ip = instance.private_ip
        self.public_ip = elastic_ip.public_ip
        self.smtp_endpoint = instance.private_ip.apply(lambda ip: f"{ip}:{SMTP_PORT}")
        self.security_group_id = security_group.id
        self.smtp_relay_host = pulumi.Output.from_input(settings.next_hop)
        self.secret_arn = pulumi.Output.from_input(secret_arn)
        self.verification_report = pulumi.Output.from_input(report)
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
            }
        )

    def _credentials_secret(
        self,
        name: str,
        args: RelayHostArgs,
        options: HostOptions,
        tags: dict[str, str],
        child: pulumi.ResourceOptions,
    ) -> pulumi.Input[str] | None:
        """The given secret's ARN, or a new secret holding api_user/api_key; None for IP auth."""
        if "credentials_secret_arn" in args:
            return args["credentials_secret_arn"]
        if options.api_user is None:
            return None
        secret = aws.secretsmanager.Secret(
            f"{name}-credentials",
            description=f"SMTP AUTH credentials of the CMC relay host {name}",
            kms_key_id=options.kms_key_arn,
            # Throwaway stacks delete it at once instead of leaving it scheduled for 30 days.
            recovery_window_in_days=0 if options.ephemeral else None,
            tags=tags,
            opts=child,
        )
        version = aws.secretsmanager.SecretVersion(
            f"{name}-credentials",
            secret_id=secret.id,
            secret_string=pulumi.Output.json_dumps(
                {"username": options.api_user, "password": pulumi.Output.secret(args["api_key"])}
            ),
            opts=child,
        )
        # The ARN is handed on only once a value exists to be read at boot.
        return pulumi.Output.all(secret.arn, version.id).apply(lambda values: values[0])

    def _security_group(
        self,
        name: str,
        args: RelayHostArgs,
        settings: RelaySettings,
        options: HostOptions,
        tags: dict[str, str],
        child: pulumi.ResourceOptions,
    ) -> aws.ec2.SecurityGroup:
        """SMTP in from the allowed clients only (SSH too, for ssh verification only); out only
        to the service and HTTPS APIs.

        DNS needs no rule: security groups do not filter traffic to the VPC resolver.
        """
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args["vpc_id"],
            description=f"CMC relay host {name}: SMTP from allowed clients only",
            tags=tags,
            opts=child,
        )
        for index, cidr in enumerate(settings.allowed_cidrs):
            is_ipv6 = ":" in cidr
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-smtp-in-{index}",
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=SMTP_PORT,
                to_port=SMTP_PORT,
                description=f"SMTP from allowed network {cidr}",
                cidr_ipv4=None if is_ipv6 else cidr,
                cidr_ipv6=cidr if is_ipv6 else None,
                opts=child,
            )
        for index, source_group in enumerate(args.get("allowed_security_group_ids", ())):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-smtp-in-sg-{index}",
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=SMTP_PORT,
                to_port=SMTP_PORT,
                referenced_security_group_id=source_group,
                description="SMTP from an allowed security group",
                opts=child,
            )
        for index, cidr in enumerate(options.ssh_allowed_cidrs):
            is_ipv6 = ":" in cidr
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-ssh-in-{index}",
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=SSH_PORT,
                to_port=SSH_PORT,
                description=f"SSH for post-boot verification from {cidr}",
                cidr_ipv4=None if is_ipv6 else cidr,
                cidr_ipv6=cidr if is_ipv6 else None,
                opts=child,
            )
        egress = {
            settings.smtp_port: "the service's SMTP relay port",
            **{port: "HTTPS APIs and package mirrors" for port in PACKAGE_PORTS[settings.os]},
        }
        for port, purpose in egress.items():
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
        return group

    def _instance_profile(
        self,
        name: str,
        secret_arn: pulumi.Input[str] | None,
        options: HostOptions,
        tags: dict[str, str],
        child: pulumi.ResourceOptions,
    ) -> tuple[aws.iam.InstanceProfile, list[pulumi.Resource]]:
        """The instance's profile, and the policies it needs before the host can be verified."""
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(EC2_ASSUME_ROLE_POLICY),
            description=f"CMC relay host {name}",
            tags=tags,
            opts=child,
        )
        partition = aws.get_partition(opts=pulumi.InvokeOptions(parent=self)).partition
        policies: list[pulumi.Resource] = [
            aws.iam.RolePolicyAttachment(
                f"{name}-ssm",
                role=role.name,
                policy_arn=ssm_managed_instance_policy_arn(partition),
                opts=child,
            )
        ]
        if secret_arn is not None:
            policy = aws.iam.RolePolicy(
                f"{name}-read-credentials",
                role=role.id,
                policy=pulumi.Output.from_input(secret_arn).apply(
                    lambda arn: json.dumps(secret_read_policy(arn, options.kms_key_arn))
                ),
                opts=child,
            )
            policies.append(policy)
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)
        return profile, policies

    def _verification(
        self,
        name: str,
        args: RelayHostArgs,
        settings: RelaySettings,
        options: HostOptions,
        instance: aws.ec2.Instance,
        elastic_ip: aws.ec2.Eip,
        user_data: pulumi.Output[str],
        after: list[pulumi.Resource],
    ) -> pulumi.Output[str] | None:
        """Run the on-host verifier once the host is up; its report, or None for ``none``.

        A failed check fails the command, and so the deployment.
        """
        if options.verification == "none":
            return None
        # Once the host is reachable at its address with its permissions (``after``), and again
        # only when the instance or its payload changes; gone with the instance.
        opts = pulumi.ResourceOptions(parent=self, depends_on=after, deleted_with=instance)
        triggers = [instance.id, user_data.apply(verification.payload_digest)]
        if options.verification == "ssm":
            region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region
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
            ).stdout
        connection = remote.ConnectionArgs(
            host=elastic_ip.public_ip,
            user=OS_PROFILES[settings.os].login_user,
            private_key=pulumi.Output.secret(args["ssh_private_key"]),
            dial_error_limit=-1,  # until cloud-init has installed the key, or the timeout
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
            create=verification.SSH_VERIFY_SCRIPT,
            triggers=triggers,
            add_previous_output_in_env=False,
            opts=waited.merge(pulumi.ResourceOptions(depends_on=[ready])),
        ).stdout

    def _image_id(self, settings: RelaySettings, options: HostOptions) -> str:
        image = IMAGES[settings.os]
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
