"""Fixtures of the fetch-secret tests: moto on loopback, a private Postfix config directory,
PATH shims logging argv, and the ``Env`` that runs the script (``harness``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simworld.netns_rig import moto_on_loopback
from tests.fetch_secret.harness import (
    POSTFIX,
    POSTMAP,
    Env,
    age,
    aws_client,
)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_on_loopback() as endpoint:
        yield endpoint


@pytest.fixture
def sm(moto_url: str) -> Any:
    return aws_client("secretsmanager", moto_url)


@pytest.fixture
def pfdir(tmp_path: Path) -> Path:
    d = tmp_path / "postfix"
    d.mkdir()
    (d / "main.cf").write_text("compatibility_level = 3.6\n")
    if Path("/etc/postfix/master.cf").exists():
        shutil.copy("/etc/postfix/master.cf", d / "master.cf")
    age(d / "main.cf")
    return d


@pytest.fixture
def shims(tmp_path: Path) -> Path:
    """A bin dir whose postmap/postfix log their argv, then run the real programs.

    postfix pretends to be running (status 0, reload 0) while the file ``running`` exists.
    """
    b = tmp_path / "shims"
    b.mkdir()
    log = 'printf "%s\\n" "$(basename "$0") $*" >> "$SHIM_DIR/argv.log"\n'
    (b / "postmap").write_text(f'#!/bin/sh\n{log}exec {POSTMAP} "$@"\n')
    (b / "postfix").write_text(
        f'#!/bin/sh\n{log}[ -e "$SHIM_DIR/running" ] && exit 0\nexec {POSTFIX} "$@"\n'
    )
    for f in ("postmap", "postfix"):
        (b / f).chmod(0o755)
    return b


@pytest.fixture
def env(tmp_path: Path, pfdir: Path, shims: Path, moto_url: str) -> Env:
    return Env(tmp_path, pfdir, shims, moto_url)
