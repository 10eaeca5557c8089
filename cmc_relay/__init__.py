"""cmc_relay: a Pulumi component that runs a Postfix relay host on EC2 for Customers Mail Cloud.

``from cmc_relay import RelayHost, RelayHostArgs``. The component lives in
``cmc_relay.components`` and the host's payload (rendered config, on-host scripts) in
``cmc_relay.userdata``; in the repository they are the top-level ``components/`` and
``userdata/`` folders, mapped into this package by ``pyproject.toml``.
"""

from importlib import metadata

from cmc_relay.components import TYPE_TOKEN, RelayHost, RelayHostArgs

# Written once, in pyproject.toml; read from the installed distribution.
__version__ = metadata.version("cmc-relay-host")

__all__ = ["TYPE_TOKEN", "RelayHost", "RelayHostArgs", "__version__"]
