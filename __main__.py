"""Stack program: one relay host per stack. The only place that reads stack config."""

from __future__ import annotations

from typing import Any, cast

import pulumi
import pulumi_aws as aws

from components import RelayHost, RelayHostArgs
from userdata.settings import CONFIG_KEYS

_INT_KEYS = {"smtpPort", "maxConnections", "messageSizeLimit", "secretRefreshMinutes"}
_BOOL_KEYS = {"ephemeral"}
_LIST_KEYS = {"allowedCidrs", "allowedSecurityGroupIds", "sshAllowedCidrs"}
_SECRET_KEYS = {"apiKey", "sshPrivateKey"}
_NETWORK_KEYS = {"subnetId", "allowedCidrs"}  # resolved by network(), from AWS if unset
_ARG_NAMES = {key: name for name, key in CONFIG_KEYS.items()} | {
    "allowedSecurityGroupIds": "allowed_security_group_ids",
    "tags": "tags",
}


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
        elif key in _LIST_KEYS or key == "tags":
            value = config.get_object(key)
        elif key in _SECRET_KEYS:
            value = config.get_secret(key)
        else:
            value = config.get(key)
        if value is not None:
            args[name] = value
    return args


def network(config: pulumi.Config) -> tuple[str, str, list[str]]:
    """VPC, subnet and allowed client networks: from config, else the default VPC's."""
    subnet_id = config.get("subnetId")
    if subnet_id is None:
        default_vpc = aws.ec2.get_vpc(default=True)
        subnets = aws.ec2.get_subnets(
            filters=[
                aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[default_vpc.id]),
                aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
            ]
        )
        if not subnets.ids:
            raise pulumi.RunError("subnetId: not set, and the default VPC has no default subnet")
        subnet_id = sorted(subnets.ids)[0]
    vpc_id = aws.ec2.get_subnet(id=subnet_id).vpc_id
    allowed_cidrs = config.get_object("allowedCidrs") or [aws.ec2.get_vpc(id=vpc_id).cidr_block]
    return vpc_id, subnet_id, list(allowed_cidrs)


config = pulumi.Config()
vpc_id, subnet_id, allowed_cidrs = network(config)
args = {"vpc_id": vpc_id, "subnet_id": subnet_id, "allowed_cidrs": allowed_cidrs}
relay = RelayHost("relay", cast(RelayHostArgs, args | read_config(config)))

pulumi.export("instanceId", relay.instance_id)
pulumi.export("privateIp", relay.private_ip)
pulumi.export("publicIp", relay.public_ip)
pulumi.export("smtpEndpoint", relay.smtp_endpoint)
pulumi.export("securityGroupId", relay.security_group_id)
pulumi.export("smtpRelayHost", relay.smtp_relay_host)
pulumi.export("secretArn", relay.secret_arn)
pulumi.export("verificationReport", relay.verification_report)
