"""userdata/scripts/cmc_relay_host.py, what the on-host scripts share: its exit-code table as
the README documents it, retrying with backoff, the env file, instance metadata over IMDSv2
(the twins' metadata stand-in on loopback)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from simworld.twin import imds
from tests.host_scripts import load_script

helper = load_script("cmc_relay_host.py")
README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_documents_every_exit_code_once() -> None:
    section = README.read_text().split("## The host's scripts and their exit codes")[1]
    rows = re.findall(r"^\| (\d+) \| ", section.split("\n## ")[0], re.M)
    assert [int(code) for code in rows] == [code.value for code in helper.Exit]
    assert len({code.value for code in helper.Exit}) == len(helper.Exit)


class Clock:
    """time.monotonic and time.sleep for the helper: sleeping moves the clock on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_retries_back_off_then_give_up_with_the_failures_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(helper.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(helper.time, "sleep", clock.sleep)
    reported: list[str] = []

    def denied() -> str:
        raise helper.TryAgain("access denied", helper.Exit.ACCESS_DENIED)

    with pytest.raises(helper.TryAgain) as gave_up:
        helper.with_retries(denied, 10, reported.append)
    assert clock.slept == [1, 2, 4, 3]  # doubling, the last cut to the deadline
    assert reported == ["access denied; retrying"] * 4
    assert str(gave_up.value) == "access denied; gave up after 10s"
    assert gave_up.value.code == helper.Exit.ACCESS_DENIED


def test_retries_stop_at_the_first_success_and_let_other_failures_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(helper.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(helper.time, "sleep", clock.sleep)
    answers = iter([helper.TryAgain("not yet"), "done"])

    def attempt() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    assert helper.with_retries(attempt, 60, lambda _: None) == "done"
    assert clock.slept == [1]

    def not_found() -> str:
        raise helper.Failure("no such secret", helper.Exit.NOT_FOUND)

    with pytest.raises(helper.Failure, match="no such secret"):
        helper.with_retries(not_found, 60, lambda _: None)
    assert clock.slept == [1]  # not retried


def test_the_env_file_gives_names_and_values_without_comments(tmp_path: Path) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text("# CMC_OS=not-this\n\nCMC_OS=debian-13\n  CMC_NEXT_HOP = [h]:587 \nX\n")
    assert helper.read_env_file(str(env_file)) == {
        "CMC_OS": "debian-13",
        "CMC_NEXT_HOP": "[h]:587",
    }
    with pytest.raises(OSError):
        helper.read_env_file(str(tmp_path / "absent.env"))


def test_instance_metadata_is_read_with_a_session_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token first (PUT), then GETs with it; a path the instance lacks is a ValueError, not
    retried."""
    tree = {"meta-data": {"placement": {"region": "ap-northeast-1"}}}
    with imds.on_loopback(tree) as url:
        monkeypatch.setenv(helper.METADATA_SERVICE_VARIABLE, url)
        metadata = helper.InstanceMetadata(max_wait=0, timeout=5, report=lambda _: None)
        assert metadata.get("meta-data/placement/region") == "ap-northeast-1"
        assert metadata.token
        with pytest.raises(ValueError, match="HTTP 404"):
            metadata.get("meta-data/tags/instance/cmc-relay-host-index")
