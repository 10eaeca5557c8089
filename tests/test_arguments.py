"""One argument schema: ``RelayHostArgs`` (name, type, docstring) and ``components/arguments.py``
(kind, default, choices, secret, known when the program runs) agree, and ``Pulumi.yaml``'s
``config:``, the README's configuration table and the stack's config reading follow them.
A key added, renamed or retyped in one place and not the others fails here, naming it.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import typing
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from cmc_relay.components import RelayHostArgs, args
from cmc_relay.components.arguments import (
    ARGUMENTS,
    CONFIG_KEYS,
    COUNTED_LISTS,
    KNOWN_WHEN_RUN,
)
from cmc_relay.userdata.settings import RelaySettings

ROOT = Path(__file__).parent.parent
KINDS = {str: "string", int: "integer", bool: "boolean"}


def unwrap(annotation: Any) -> tuple[Any, bool]:
    """The type inside ``Required[...]`` and ``pulumi.Input[...]``, and whether it is an Input."""
    if typing.get_origin(annotation) is typing.Required:
        annotation = typing.get_args(annotation)[0]
    members = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and any(
        typing.get_origin(member) is Awaitable for member in members
    ):
        return members[0], True
    return annotation, False


def kind_of(annotation: Any) -> str:
    inner, _ = unwrap(annotation)
    origin = typing.get_origin(inner)
    if origin in (Sequence, list):
        return "array"
    if origin in (Mapping, dict):
        return "object"
    return KINDS[inner]


def test_every_argument_is_declared_once_in_order() -> None:
    assert [a.name for a in ARGUMENTS] == list(RelayHostArgs.__annotations__)


def test_kinds_follow_the_typed_declaration() -> None:
    for argument in ARGUMENTS:
        annotation = RelayHostArgs.__annotations__[argument.name]
        assert kind_of(annotation) == argument.kind, argument.name


def test_inputs_are_the_arguments_that_need_not_be_known_when_the_program_runs() -> None:
    """Typed ``pulumi.Input`` unless the table says why not; a counted list is a plain list of
    Inputs; the rest takes Outputs throughout."""
    for argument in ARGUMENTS:
        annotation = RelayHostArgs.__annotations__[argument.name]
        inner, is_input = unwrap(annotation)
        if argument.name in KNOWN_WHEN_RUN:
            assert not is_input and inner in KINDS, argument.name
        elif argument.name in COUNTED_LISTS:
            assert not is_input and kind_of(annotation) == "array", argument.name
            assert unwrap(typing.get_args(inner)[0])[1], argument.name  # its elements
        else:
            assert is_input, argument.name


def field_docstrings() -> dict[str, str]:
    """RelayHostArgs' fields and the docstrings under them, as the schema analyzer reads them."""
    tree = ast.parse(inspect.getsource(args))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RelayHostArgs"]
    found: dict[str, str] = {}
    for node, after in zip(cls.body, cls.body[1:], strict=False):
        documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
            found[node.target.id] = str(after.value.value)  # type: ignore[attr-defined]
    return found


def test_every_field_has_a_docstring_and_plain_ones_are_listed() -> None:
    assert set(field_docstrings()) == set(RelayHostArgs.__annotations__)
    assert RelayHostArgs.__doc__ is not None
    documented = " ".join(RelayHostArgs.__doc__.split())
    for name in (*KNOWN_WHEN_RUN, *COUNTED_LISTS):
        assert f"``{name}``" in documented, name


def test_defaults_are_the_settings_defaults() -> None:
    settings_defaults = {f.name: f.default for f in fields(RelaySettings) if f.init}
    for argument in ARGUMENTS:
        if argument.name in settings_defaults and argument.default is not None:
            assert settings_defaults[argument.name] == argument.default, argument.name


def test_pulumi_yaml_declares_each_key_with_its_kind_and_secrecy() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == set(CONFIG_KEYS.values())
    for argument in ARGUMENTS:
        if argument.config:
            spec = declared[argument.key]
            assert spec["type"] == argument.kind, argument.key
            assert spec.get("secret", False) == argument.secret, argument.key


def readme_defaults() -> dict[str, str]:
    """The README configuration table: key -> its default column."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n## Configuration\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \|", table, flags=re.M)
    return {key: default for key, default in rows if key in CONFIG_KEYS.values()}


def test_the_readme_table_shows_each_declared_default() -> None:
    defaults = readme_defaults()
    assert set(defaults) == set(CONFIG_KEYS.values())
    for argument in ARGUMENTS:
        if argument.config and argument.default is not None:
            shown = json.dumps(argument.default).strip('"')
            assert defaults[argument.key] == f"`{shown}`", argument.key


def test_the_readme_names_the_arguments_that_must_be_plain() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Values from other resources", 1)[1].split("\n## ", 1)[0]
    for name in (*KNOWN_WHEN_RUN, *COUNTED_LISTS):
        assert f"`{CONFIG_KEYS.get(name, name)}`" in section, name
