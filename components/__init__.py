"""Pulumi components of the CMC relay host."""

from components.args import RelayHostArgs
from components.relay_host import TYPE_TOKEN, RelayHost

__all__ = ["TYPE_TOKEN", "RelayHost", "RelayHostArgs"]
