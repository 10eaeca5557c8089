"""Fixtures for the integration tests: a fresh rig (namespaces, DNS, stand-in, Postfix) per test.

The layout is in ``tests/integration/rig.py``. Everything a rig starts is stopped by PID and
its namespaces are deleted when the test ends, pass or fail; its logs are kept under the
test's tmp_path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.integration.rig import (
    AWS_REGION,
    MakeRig,
    Rig,
    RigOptions,
    Secrets,
    build_rig,
    missing_requirements,
    relay_settings,
    rig_directory,
)
from userdata.settings import RelaySettings


@pytest.fixture(scope="session", autouse=True)
def _requirements() -> None:
    missing = missing_requirements()
    if missing:
        pytest.skip(f"integration rig needs: {', '.join(missing)}")


@pytest.fixture(scope="session")
def netns_etc() -> Iterator[None]:
    """/etc/netns, where ``ip netns exec`` finds per-namespace files; removed again if this
    session created it and left it empty."""
    etc = Path("/etc/netns")
    created = not etc.exists()
    etc.mkdir(exist_ok=True)
    yield
    if created:
        with contextlib.suppress(OSError):
            etc.rmdir()


@pytest.fixture(scope="session")
def secrets() -> Iterator[Secrets]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "secretsmanager",
        region_name=AWS_REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield Secrets(endpoint, client)
    server.stop()


@pytest.fixture
def make_rig(tmp_path: Path, secrets: Secrets, netns_etc: None) -> Iterator[MakeRig]:
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
