"""The verifier's cloudwatch-agent check: systemctl's answer stubbed (the sandbox has no
systemd), the payload's config and the agent's running one as files. The image twins
(tests/twin/test_twin_boot.py) run it on a booted host against the stand-in agent."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from cmc_relay.userdata.metrics import Monitoring
from cmc_relay.userdata.render import MAIL_LOG, cloudwatch_agent_config
from tests.host_scripts import load_script
from tests.test_verify_ssm_agent import with_systemd

MONITORING = Monitoring(relay="mail-prod", log_group="/cmc-relay/mail-prod")
UNIT = "amazon-cloudwatch-agent"


@pytest.fixture
def verifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The payload's config staged in tmp_path, Postfix's maillog_file the payload's."""
    module = load_script("cmc-relay-verify")
    monkeypatch.setattr(module, "CLOUDWATCH_AGENT", str(tmp_path))
    monkeypatch.setattr(module, "PC", {"maillog_file": MAIL_LOG})
    staged = tmp_path / "amazon-cloudwatch-agent.json"
    staged.write_text(json.dumps(cloudwatch_agent_config(MONITORING)))
    return module


def running(tmp_path: Path, config: dict[str, object] | str) -> None:
    """What fetch-config keeps: the config the agent runs."""
    (tmp_path / "amazon-cloudwatch-agent.d").mkdir(exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (tmp_path / "amazon-cloudwatch-agent.d" / "file_amazon-cloudwatch-agent.json").write_text(text)


def test_the_agent_running_the_payloads_config_passes(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, tmp_path: Path
) -> None:
    running(tmp_path, cloudwatch_agent_config(MONITORING))
    calls = with_systemd(monkeypatch, verifier, True, "active")
    detail = f"{UNIT} active, shipping {MAIL_LOG} to /cmc-relay/mail-prod"
    assert verifier.cloudwatch_agent() == detail
    assert calls == [("systemctl", "is-active", UNIT)]


@pytest.mark.parametrize(
    "config",
    [
        None,  # fetch-config never ran
        "not json",
        cloudwatch_agent_config(Monitoring(log_group="/cmc-relay/another-relay")),
        {"agent": {"run_as_user": "root"}},  # no logs section
    ],
)
def test_an_agent_not_shipping_the_mail_log_to_the_relays_group_fails(
    monkeypatch: pytest.MonkeyPatch,
    verifier: ModuleType,
    tmp_path: Path,
    config: dict[str, object] | str | None,
) -> None:
    if config is not None:
        running(tmp_path, config)
    with_systemd(monkeypatch, verifier, True, "active")
    with pytest.raises(verifier.Fail, match=f"runs no config shipping {MAIL_LOG} to /cmc-relay/"):
        verifier.cloudwatch_agent()


def test_a_payload_config_without_the_mail_log_fails(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "amazon-cloudwatch-agent.json").write_text("{}")
    running(tmp_path, cloudwatch_agent_config(MONITORING))
    with_systemd(monkeypatch, verifier, True, "active")
    with pytest.raises(verifier.Fail, match=f"the payload's agent config ships no {MAIL_LOG}"):
        verifier.cloudwatch_agent()


@pytest.mark.parametrize("state", ["inactive", "failed", ""])
def test_an_agent_not_running_fails(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, tmp_path: Path, state: str
) -> None:
    running(tmp_path, cloudwatch_agent_config(MONITORING))
    with_systemd(monkeypatch, verifier, True, state)
    with pytest.raises(verifier.Fail, match=f"{UNIT} is {state or 'unknown'}"):
        verifier.cloudwatch_agent()


def test_without_systemd_it_says_so(monkeypatch: pytest.MonkeyPatch, verifier: ModuleType) -> None:
    calls = with_systemd(monkeypatch, verifier, False, "active")
    assert verifier.cloudwatch_agent().startswith("not checked: systemd is not PID 1")
    assert calls == []
