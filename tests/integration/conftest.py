"""Fixtures for the integration tests: a fresh rig (namespaces, DNS, stand-in, Postfix) per test.

The layout is in ``simworld/netns_rig.py``. Everything a rig starts is stopped by PID and
its namespaces are deleted when the test ends, pass or fail; its logs are kept under the
test's tmp_path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmc_relay.userdata.settings import RelaySettings
from simworld.netns_rig import (
    MakeRig,
    Rig,
    RigOptions,
    Secrets,
    build_rig,
    missing_requirements,
    netns_etc,
    relay_settings,
    rig_directory,
    secrets_service,
)


@pytest.fixture(scope="session", autouse=True)
def _requirements() -> None:
    missing = missing_requirements()
    if missing:
        pytest.skip(f"integration rig needs: {', '.join(missing)}")


@pytest.fixture(scope="session")
def netns_etc_dir() -> Iterator[None]:
    with netns_etc():
        yield


@pytest.fixture(scope="session")
def secrets() -> Iterator[Secrets]:
    with secrets_service() as service:
        yield service


@pytest.fixture
def make_rig(tmp_path: Path, secrets: Secrets, netns_etc_dir: None) -> Iterator[MakeRig]:
    """Build a rig: ``make_rig(settings=None, **RigOptions fields)``; torn down after the test."""
    with contextlib.ExitStack() as stack:

        def make(settings: RelaySettings | None = None, **options: Any) -> Rig:
            root = stack.enter_context(rig_directory(tmp_path / "artifacts"))
            return build_rig(
                stack,
                root,
                settings or relay_settings(),
                RigOptions(**options),
                secrets,
            )

        yield make


@pytest.fixture
def rig(make_rig: MakeRig) -> Rig:
    """The relay with default settings (trial plan, SMTP AUTH) against a willing stand-in."""
    return make_rig()
