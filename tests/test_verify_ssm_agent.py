"""The verifier's ssm-agent check, with a systemctl on PATH that answers as told (this machine
has no systemd; tests/integration/test_verify.py runs the rest of the verifier on the rig, the
twins run it on a booted host)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.host_scripts import load_script


@pytest.fixture
def verifier() -> ModuleType:
    return load_script("cmc-relay-verify")


def with_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str) -> Path:
    """A systemctl first on PATH: ``is-active`` answers ``state`` (exit 0 only for active);
    its arguments are logged to the file returned."""
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir(exist_ok=True)
    systemctl = bin_dir / "systemctl"
    code = 0 if state == "active" else 3
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {log}\necho "{state}"\nexit {code}\n')
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def host(verifier: ModuleType, root: Path, env: dict[str, str], **postconf: str) -> Any:
    """The verifier's view of a host under ``root``, Postfix's parameters as given."""
    options = verifier.parse_arguments(["--root", str(root)])
    return verifier.Host(options, env, postconf_values=dict(postconf))


@pytest.mark.parametrize("unit", ["amazon-ssm-agent", "snap.amazon-ssm-agent.amazon-ssm-agent"])
def test_an_active_agent_passes(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, tmp_path: Path, unit: str
) -> None:
    calls = with_systemctl(tmp_path, monkeypatch, "active")
    checked = host(verifier, tmp_path, {"CMC_SSM_AGENT_UNIT": unit})
    assert verifier.ssm_agent(checked) == f"{unit} active"
    assert calls.read_text().splitlines() == [f"is-active {unit}"]


@pytest.mark.parametrize("state", ["inactive", "failed", ""])
def test_an_agent_not_running_fails(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, tmp_path: Path, state: str
) -> None:
    with_systemctl(tmp_path, monkeypatch, state)
    checked = host(verifier, tmp_path, {"CMC_SSM_AGENT_UNIT": "amazon-ssm-agent"})
    with pytest.raises(verifier.Fail, match=f"amazon-ssm-agent is {state or 'unknown'}"):
        verifier.ssm_agent(checked)
