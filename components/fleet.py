"""What the parts of the component share: the checked arguments, the fleet every host is built
from, and one host's resources as the network, the alarms and the outputs need them."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

import pulumi
import pulumi_aws as aws
from pulumi_command import local, remote

from cmc_relay.components.args import SECRET_ARGS, HostOptions, RelayHostArgs, validate_args
from cmc_relay.userdata.settings import RelaySettings

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


def plain_list(values: pulumi.Input[Sequence[pulumi.Input[str]]]) -> list[str]:
    """A list ``validate_args`` checked: plain strings, whatever its type allowed before."""
    return [str(value) for value in cast(Sequence[str], values)]


def resource_tags(checked: pulumi.Output[Checked], name: str) -> pulumi.Output[Mapping[str, str]]:
    """The tags of a resource of its own name (``Name``) and the caller's."""
    return checked.apply(lambda c: {"Name": name, **cast(Mapping[str, str], c.options.tags)})


@dataclass(frozen=True)
class Fleet:
    """What every host of one component shares."""

    args: RelayHostArgs
    options: HostOptions  # what decides the resources; their values come from ``checked``
    checked: pulumi.Output[Checked]
    region: str  # the provider's, where the instances are
    ami: pulumi.Input[str]
    security_group: aws.ec2.SecurityGroup
    egress_rules: list[pulumi.Resource]
    profile: aws.iam.InstanceProfile
    policies: list[pulumi.Resource]
    payload: list[pulumi.Resource]  # the bundle's pointer in S3 and the role's right to read it
    user_data: pulumi.Output[str]
    bundle_sha256: pulumi.Output[str]  # the current bundle: applied in place when it changes


@dataclass(frozen=True)
class Host:
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
