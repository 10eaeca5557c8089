"""The verifier's ssm-agent check, with systemctl's answers stubbed (the sandbox has no
systemd; tests/test_verify.py runs the rest of the verifier on a booted host)."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.host_scripts import load_script


@pytest.fixture
def verifier() -> ModuleType:
    return load_script("cmc-relay-verify")


def with_systemd(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, booted: bool, state: str
) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    def run(*cmd: str) -> tuple[int, str]:
        calls.append(cmd)
        return (0 if state == "active" else 3), state

    monkeypatch.setattr(verifier, "run", run)
    real_isdir = verifier.os.path.isdir
    monkeypatch.setattr(
        verifier.os.path,
        "isdir",
        lambda path: booted if path == "/run/systemd/system" else real_isdir(path),
    )
    return calls


@pytest.mark.parametrize("unit", ["amazon-ssm-agent", "snap.amazon-ssm-agent.amazon-ssm-agent"])
def test_an_active_agent_passes(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, unit: str
) -> None:
    verifier.env["CMC_SSM_AGENT_UNIT"] = unit
    calls = with_systemd(monkeypatch, verifier, True, "active")
    assert verifier.ssm_agent() == f"{unit} active"
    assert calls == [("systemctl", "is-active", unit)]


@pytest.mark.parametrize("state", ["inactive", "failed", ""])
def test_an_agent_not_running_fails(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, state: str
) -> None:
    verifier.env["CMC_SSM_AGENT_UNIT"] = "amazon-ssm-agent"
    with_systemd(monkeypatch, verifier, True, state)
    with pytest.raises(verifier.Fail, match=f"amazon-ssm-agent is {state or 'unknown'}"):
        verifier.ssm_agent()


def test_without_systemd_it_says_so(monkeypatch: pytest.MonkeyPatch, verifier: ModuleType) -> None:
    verifier.env["CMC_SSM_AGENT_UNIT"] = "amazon-ssm-agent"
    calls = with_systemd(monkeypatch, verifier, False, "active")
    assert verifier.ssm_agent().startswith("not checked: systemd is not PID 1")
    assert calls == []
