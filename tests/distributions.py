"""Build the distributions as a release would: the sdist, the wheel from it, and the wheel from
the tree, each with ``python -m build`` in its own isolated environment (setuptools from the
registry, through pip's cache).

The tree is copied first (links kept, no virtualenv, no earlier ``build/``), so a build neither
writes into the checkout nor picks up a stale file from an earlier one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", "results",
)  # fmt: skip


def project_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


@dataclass(frozen=True)
class Distributions:
    sdist: Path
    wheel: Path  # built from the sdist, as pip builds it when only the sdist is published
    wheel_from_tree: Path
    seconds: float  # both builds, printed by the tests


def build(work: Path) -> Distributions:
    started = time.monotonic()
    source = work / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCES)
    for outdir, flags in (("dist", []), ("tree", ["--wheel"])):
        command = [sys.executable, "-m", "build", *flags, "--outdir", str(work / outdir)]
        result = subprocess.run([*command, str(source)], capture_output=True, text=True)
        if result.returncode:
            raise AssertionError(f"{' '.join(command)}:\n{result.stdout[-4000:]}{result.stderr}")
    (sdist,) = (work / "dist").glob("*.tar.gz")
    (wheel,) = (work / "dist").glob("*.whl")
    (wheel_from_tree,) = (work / "tree").glob("*.whl")
    return Distributions(sdist, wheel, wheel_from_tree, time.monotonic() - started)
