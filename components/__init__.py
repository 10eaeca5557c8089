"""Pulumi components of the CMC relay host."""

from cmc_relay.components.args import RelayHostArgs
from cmc_relay.components.relay_host import TYPE_TOKEN, RelayHost

__all__ = ["TYPE_TOKEN", "RelayHost", "RelayHostArgs"]
