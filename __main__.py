"""Stack program: one relay (one host or several) per stack. The only reader of stack config."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, cast

import pulumi
import pulumi.runtime.config
import pulumi_aws as aws

from cmc_relay.components import RelayHost, RelayHostArgs
from cmc_relay.components.args import check_subnet_placement
from cmc_relay.components.arguments import ARGUMENTS, CONFIG_KEYS, Argument


def unknown_config_keys(keys: Iterable[str], known: Iterable[str]) -> str | None:
    """The error naming each key of ``keys`` not in ``known`` (with the closest known key, if
    any is close), or None when every key is known."""
    known_keys = sorted(set(known))
    unknown = sorted(set(keys) - set(known_keys))
    if not unknown:
        return None
    # Compared case-insensitively: config keys are case-sensitive, so "OS" is a typo of "os".
    by_lower = {key.lower(): key for key in known_keys}
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key.lower(), list(by_lower), n=1)
        hint = f"; did you mean {by_lower[close[0]]}?" if close else ""
        problems.append(f"config {key}: unknown key{hint}")
    separator = " " if len(problems) == 1 else "\n"
    return "\n".join(problems) + f"{separator}(known: {', '.join(known_keys)})"


def project_config_keys(project: str) -> list[str]:
    """Every key set in this project's config namespace (``project:key``), without the prefix.

    The SDK has no public listing of config keys. The CLI's program runner, automation API and
    mocks all load stack config into ``pulumi.runtime.config.CONFIG``; ``get_config_env`` (the
    ``PULUMI_CONFIG`` the CLI passes) is added in case a runner reads config lazily from it.
    Other namespaces (``aws:``, ``pulumi:``, ...) belong to providers and the engine.
    """
    keys = {*pulumi.runtime.get_config_env(), *pulumi.runtime.config.CONFIG.get()}
    prefix = f"{project}:"
    return sorted(key.removeprefix(prefix) for key in keys if key.startswith(prefix))


def read_config(config: pulumi.Config) -> dict[str, Any]:
    """Every component argument set in stack config, under its argument name, read as its
    declaration (``components/arguments.py``) says; ``network()`` resolves the network's."""
    args: dict[str, Any] = {}
    for argument in ARGUMENTS:
        if argument.config and not argument.network:
            value = read_key(config, argument)
            if value is not None:
                args[argument.name] = value
    return args


def read_key(config: pulumi.Config, argument: Argument) -> Any:
    if argument.secret:
        return config.get_secret(argument.key)
    if argument.kind == "integer":
        return config.get_int(argument.key)
    if argument.kind == "boolean":
        return config.get_bool(argument.key)
    if argument.kind in ("array", "object"):
        return config.get_object(argument.key)
    return config.get(argument.key)


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


# A mistyped key (maxConection) would otherwise be ignored and its default used: stop first,
# before network() makes AWS calls and before any resource exists.
_unknown = unknown_config_keys(project_config_keys(pulumi.get_project()), CONFIG_KEYS.values())
if _unknown:
    raise pulumi.RunError(_unknown)

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
pulumi.export("logGroupName", relay.log_group_name)
pulumi.export("dashboardUrl", relay.dashboard_url)
pulumi.export("alarmTopicArn", relay.alarm_topic_arn)
pulumi.export("imageId", relay.image_id)
pulumi.export("latestImageId", relay.latest_image_id)
