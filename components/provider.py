"""The component as a Pulumi package, for programs in other languages (``pulumi package add``).

``provider/`` is the plugin directory (``PulumiPlugin.yaml``, runtime python); its
``__main__.py`` calls :func:`main`. The schema is inferred from ``RelayHostArgs`` (inputs, with
their docstrings as descriptions) and ``RelayHost``'s annotated outputs by Pulumi's analyzer
(``pulumi.provider.experimental``), then completed from the argument declarations
(``components/arguments.py``) with what the analyzer does not infer: it reads neither
``Literal`` choices (only ``Enum`` classes, which Python callers would have to import and
pass), nor defaults, nor secrets. The validation is the component's own.
"""

import json
import re
import sys
from importlib import metadata
from typing import Any, Final

from pulumi import ComponentResource
from pulumi.provider import main as serve
from pulumi.provider.experimental.component import ComponentProvider

from cmc_relay.components.arguments import ARGUMENTS, Argument
from cmc_relay.components.relay_host import TYPE_TOKEN, RelayHost
from cmc_relay.userdata.settings import config_key

PACKAGE_NAME: Final = TYPE_TOKEN.split(":")[0]  # the schema's name must prefix the type token
COMPONENTS: Final[list[type[ComponentResource]]] = [RelayHost]
# Argument names in descriptions, longest first (``subnet_ids`` before ``subnet_id``).
_SNAKE_NAMES: Final = re.compile(
    r"\b("
    + "|".join(sorted((a.name for a in ARGUMENTS if "_" in a.name), key=len, reverse=True))
    + r")\b"
)
_README_TAGS: Final = re.compile(r"\s*\(G\d+(, G\d+)*\)")  # the requirement tags (G4, ...)


def version() -> str:
    return metadata.version("cmc-relay-host")


class RelayProvider(ComponentProvider):
    """Pulumi's component provider serving the completed schema (``complete_schema``)."""

    def __init__(self) -> None:
        super().__init__(COMPONENTS, PACKAGE_NAME, version=version())
        assert self.schema is not None
        self.schema = json.dumps(complete_schema(json.loads(self.schema)))


def schema() -> dict[str, Any]:
    """The package schema the plugin serves, generated in-process."""
    served = RelayProvider().schema
    assert served is not None
    loaded: dict[str, Any] = json.loads(served)
    return loaded


def main() -> None:
    """Serve the component; the language host passes the engine's address as arguments."""
    serve(RelayProvider(), sys.argv[1:])


def enum_token(argument: Argument) -> str:
    """The type token of a choice's enum: ``cmc-relay:index:AuthMode``."""
    return f"{PACKAGE_NAME}:index:{''.join(part.title() for part in argument.name.split('_'))}"


def enum_value_name(value: str) -> str:
    """A name each SDK can use for a choice: ``ubuntu-24.04`` -> ``Ubuntu2404``."""
    return "".join(part.title() for part in re.split(r"[^A-Za-z0-9]+", value))


def schema_description(text: str) -> str:
    """A docstring as the schema's description: argument names as the schema's camelCase
    properties, no README-only requirement tags, one paragraph."""
    text = _README_TAGS.sub("", " ".join(text.split()))
    return _SNAKE_NAMES.sub(lambda found: config_key(found[1]), text.replace("``", "`"))


def complete_schema(package: dict[str, Any]) -> dict[str, Any]:
    """The analyzer's schema with enums for the choices, defaults where giving the default is
    the same as leaving it out, secret inputs marked, descriptions in camelCase."""
    types: dict[str, Any] = package.setdefault("types", {})
    resource = package["resources"][TYPE_TOKEN]
    resource["description"] = schema_description(resource["description"])
    for spec in resource["properties"].values():
        spec["description"] = schema_description(spec["description"])
    inputs = resource["inputProperties"]
    for argument in ARGUMENTS:
        spec = inputs[argument.key]
        spec["description"] = schema_description(spec["description"])
        if argument.choices:
            token = enum_token(argument)
            types[token] = {
                "type": "string",
                "description": f"The choices of `{argument.key}`.",
                "enum": [
                    {"name": enum_value_name(value), "value": value} for value in argument.choices
                ],
            }
            del spec["type"]
            spec["$ref"] = f"#/types/{token}"
        if argument.default is not None and not argument.presence_matters:
            spec["default"] = argument.default
        if argument.secret:
            spec["secret"] = True
    return package
