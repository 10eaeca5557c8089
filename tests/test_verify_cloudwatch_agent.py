"""The verifier's cloudwatch-agent check: systemctl answering as told (this machine has no
systemd), the payload's config and the agent's running one as files under a temporary root.
The image twins (tests/twin/test_twin_boot.py) run it on a booted host against the stand-in
agent."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from cmc_relay.userdata.metrics import Monitoring
from cmc_relay.userdata.render import MAIL_LOG, cloudwatch_agent_config
from tests.host_scripts import load_script
from tests.test_verify_ssm_agent import host, with_systemctl

MONITORING = Monitoring(relay="mail-prod", log_group="/cmc-relay/mail-prod")
UNIT = "amazon-cloudwatch-agent"


AGENT_ETC = "opt/aws/amazon-cloudwatch-agent/etc"


@pytest.fixture
def verifier() -> ModuleType:
    return load_script("cmc-relay-verify")


@pytest.fixture
def agent_etc(tmp_path: Path) -> Path:
    """The payload's config staged under the temporary root."""
    etc = tmp_path / AGENT_ETC
    etc.mkdir(parents=True)
    (etc / "amazon-cloudwatch-agent.json").write_text(
        json.dumps(cloudwatch_agent_config(MONITORING))
    )
    return etc


def running(agent_etc: Path, config: dict[str, object] | str) -> None:
    """What fetch-config keeps: the config the agent runs."""
    (agent_etc / "amazon-cloudwatch-agent.d").mkdir(exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (agent_etc / "amazon-cloudwatch-agent.d" / "file_amazon-cloudwatch-agent.json").write_text(text)


def check(verifier: ModuleType, tmp_path: Path) -> str:
    """The check on the host under tmp_path, Postfix's maillog_file the payload's."""
    checked = host(verifier, tmp_path, {}, maillog_file=MAIL_LOG)
    return str(verifier.cloudwatch_agent(checked))


def test_the_agent_running_the_payloads_config_passes(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, tmp_path: Path, agent_etc: Path
) -> None:
    running(agent_etc, cloudwatch_agent_config(MONITORING))
    calls = with_systemctl(tmp_path, monkeypatch, "active")
    detail = f"{UNIT} active, shipping {MAIL_LOG} to /cmc-relay/mail-prod"
    assert check(verifier, tmp_path) == detail
    assert calls.read_text().splitlines() == [f"is-active {UNIT}"]


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
    agent_etc: Path,
    config: dict[str, object] | str | None,
) -> None:
    if config is not None:
        running(agent_etc, config)
    with_systemctl(tmp_path, monkeypatch, "active")
    with pytest.raises(verifier.Fail, match=f"runs no config shipping {MAIL_LOG} to /cmc-relay/"):
        check(verifier, tmp_path)


def test_a_payload_config_without_the_mail_log_fails(
    monkeypatch: pytest.MonkeyPatch, verifier: ModuleType, tmp_path: Path, agent_etc: Path
) -> None:
    (agent_etc / "amazon-cloudwatch-agent.json").write_text("{}")
    running(agent_etc, cloudwatch_agent_config(MONITORING))
    with_systemctl(tmp_path, monkeypatch, "active")
    with pytest.raises(verifier.Fail, match=f"the payload's agent config ships no {MAIL_LOG}"):
        check(verifier, tmp_path)


@pytest.mark.parametrize("state", ["inactive", "failed", ""])
def test_an_agent_not_running_fails(
    monkeypatch: pytest.MonkeyPatch,
    verifier: ModuleType,
    tmp_path: Path,
    agent_etc: Path,
    state: str,
) -> None:
    running(agent_etc, cloudwatch_agent_config(MONITORING))
    with_systemctl(tmp_path, monkeypatch, state)
    with pytest.raises(verifier.Fail, match=f"{UNIT} is {state or 'unknown'}"):
        check(verifier, tmp_path)
