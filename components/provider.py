"""The component as a Pulumi package, for programs in other languages (``pulumi package add``).

``provider/`` is the plugin directory (``PulumiPlugin.yaml``, runtime python); its
``__main__.py`` calls :func:`main`. The schema is inferred from ``RelayHostArgs`` (inputs, with
their docstrings as descriptions) and ``RelayHost``'s annotated outputs; the validation is the
component's own.
"""

import json
from importlib import metadata
from typing import Any, Final

from pulumi import ComponentResource
from pulumi.provider.experimental import component_provider_host
from pulumi.provider.experimental.component import ComponentProvider

from cmc_relay.components.relay_host import TYPE_TOKEN, RelayHost

PACKAGE_NAME: Final = TYPE_TOKEN.split(":")[0]  # the schema's name must prefix the type token
COMPONENTS: Final[list[type[ComponentResource]]] = [RelayHost]


def version() -> str:
    return metadata.version("cmc-relay-host")


def schema() -> dict[str, Any]:
    """The package schema the plugin serves, generated in-process."""
    provider = ComponentProvider(COMPONENTS, PACKAGE_NAME, version=version())
    assert provider.schema is not None
    loaded: dict[str, Any] = json.loads(provider.schema)
    return loaded


def main() -> None:
    component_provider_host(COMPONENTS, PACKAGE_NAME, version=version())
