"""What the twin tests share."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from simworld.twin.session import TwinBoot


@pytest.fixture(scope="module")
def booted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwinBoot]:
    """A debian-13 twin of the default stack after its first boot, one per test module; its
    files are kept under the module's name."""
    boot = TwinBoot("debian-13", secrets.token_urlsafe(18))
    try:
        boot.build()
        boot.start_world()
        boot.render()
        boot.prepare()
        boot.boot()
        assert boot.cloud_init_status()["status"] == "done"
        yield boot
    finally:
        module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
        boot.close(keep=tmp_path_factory.mktemp(module.replace("_", "-")))
