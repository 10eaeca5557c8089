"""Stack program: one relay (one host or several) per stack. The only reader of stack config."""

from __future__ import annotations

from typing import Any, cast

import pulumi
import pulumi_aws as aws

from components import RelayHost, RelayHostArgs
from components.args import check_subnet_placement
from userdata.settings import CONFIG_KEYS

_INT_KEYS = {
    "smtpPort", "maxConnections", "messageSizeLimit", "secretRefreshMinutes", "replicas",
    "proMaxSessions", "drainTimeoutSeconds",
}  # fmt: skip
_BOOL_KEYS = {"ephemeral", "drainOnDelete"}
_STRUCTURED_KEYS = {
    "allowedCidrs", "allowedSecurityGroupIds", "sshAllowedCidrs", "subnetIds", "natGatewayIps",
    "tags",
}  # fmt: skip
_SECRET_KEYS = {"apiKey", "sshPrivateKey"}
_NETWORK_KEYS = {"subnetId", "allowedCidrs"}  # resolved by network(), from AWS if unset
_ARG_NAMES = {key: name for name, key in CONFIG_KEYS.items()}


def read_config(config: pulumi.Config) -> dict[str, Any]:
    """Every component argument set in stack config, under its argument name."""
    args: dict[str, Any] = {}
    for key, name in _ARG_NAMES.items():
        if key in _NETWORK_KEYS:
            continue
        if key in _INT_KEYS:
            value: Any = config.get_int(key)
        elif key in _BOOL_KEYS:
            value = config.get_bool(key)
        elif key in _STRUCTURED_KEYS:
            value = config.get_object(key)
        elif key in _SECRET_KEYS:
            value = config.get_secret(key)
        else:
            value = config.get(key)
        if value is not None:
            args[name] = value
    return args


def network(config: pulumi.Config) -> tuple[str, str, list[str]]:
    """VPC, (first) subnet and allowed client networks: from config, else the default VPC's.

    The hosts' subnets (subnetIds) must share the VPC and each be in a zone of its own.
    """
    subnet_ids = config.get_object("subnetIds")
    subnet_ids = subnet_ids if isinstance(subnet_ids, list) else []  # else the component refuses
    subnet_id = config.get("subnetId") or next(iter(subnet_ids), None)
    if subnet_id is None:
        default_vpc = aws.ec2.get_vpc(default=True)
        defaults = aws.ec2.get_subnets(
            filters=[
                aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[default_vpc.id]),
                aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
            ]
        )
        if not defaults.ids:
            raise pulumi.RunError("subnetId: not set, and the default VPC has no default subnet")
        subnet_id = sorted(defaults.ids)[0]
    subnets = [aws.ec2.get_subnet(id=subnet) for subnet in dict.fromkeys([subnet_id, *subnet_ids])]
    check_subnet_placement([(s.id, s.vpc_id, s.availability_zone) for s in subnets])
    vpc_id = subnets[0].vpc_id
    allowed_cidrs = config.get_object("allowedCidrs") or [aws.ec2.get_vpc(id=vpc_id).cidr_block]
    return vpc_id, subnet_id, list(allowed_cidrs)


config = pulumi.Config()
vpc_id, subnet_id, allowed_cidrs = network(config)
args = {"vpc_id": vpc_id, "subnet_id": subnet_id, "allowed_cidrs": allowed_cidrs}
relay = RelayHost("relay", cast(RelayHostArgs, args | read_config(config)))

pulumi.export("instanceId", relay.instance_id)
pulumi.export("privateIp", relay.private_ip)
pulumi.export("publicIp", relay.public_ip)
pulumi.export("sendingIps", relay.sending_ips)
pulumi.export("smtpEndpoint", relay.smtp_endpoint)
pulumi.export("securityGroupId", relay.security_group_id)
pulumi.export("smtpRelayHost", relay.smtp_relay_host)
pulumi.export("secretArn", relay.secret_arn)
pulumi.export("verificationReport", relay.verification_report)
