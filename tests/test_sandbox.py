"""``python -m sandbox`` end to end (the project's main job: the default OS's twin booted,
rebooted, verified), its teardown when interrupted, and its refusal to run where it cannot."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cmc_relay.userdata.settings import DEFAULT_OS, RelaySettings
from sandbox import __main__ as cli
from simworld.alarm_check import Series
from simworld.rig.process import command_lines
from simworld.standin import MessageRecord
from simworld.twin import build as twin_build
from simworld.twin import prereq, scenario
from simworld.twin.session import OPERATOR_EMAIL, SENDER_DOMAIN, Submission, TwinBoot

REPO = Path(__file__).resolve().parents[1]
MARK = "Zq9-SECRET-MARKER-7xW"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")


def sandbox_command(password_file: Path) -> list[str]:
    return [sys.executable, "-m", "sandbox", "--password-file", str(password_file)]


def twin_traces() -> set[str]:
    """What of a twin is on this machine now: namespaces, loop devices, mounts, work
    directories and booted machines."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    loops = subprocess.run(["losetup", "--all"], capture_output=True, text=True).stdout
    traces = {
        f"namespace {line.split()[0]}" for line in namespaces.splitlines() if "cmctwin" in line
    }
    traces |= {f"loop {line}" for line in loops.splitlines() if "cmc-twin-" in line}
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    traces |= {f"mount {line}" for line in mounts if "cmc-twin" in line}
    traces |= {f"directory {path}" for path in Path("/var/tmp").glob("cmc-twin-*")}
    traces |= {
        f"machine pid {pid}"
        for pid, line in command_lines().items()
        if b"systemd-nspawn\0--boot" in line
    }
    return traces


@pytest.fixture
def traces_before() -> set[str]:
    """A twin's traces already here (another run's on this machine) are not this test's."""
    return twin_traces()


def assert_nothing_left(traces_before: set[str]) -> None:
    """The run left no twin, namespace, mount, loop device or work directory behind."""
    assert twin_traces() - traces_before == set()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(f"{MARK}-sandbox\n")
    path.chmod(0o600)
    return path


@pytest.mark.integration
@needs_root
def test_sandbox_boots_relays_reboots_verifies_and_cleans_up(
    password_file: Path, traces_before: set[str]
) -> None:
    result = subprocess.run(
        sandbox_command(password_file), cwd=REPO, capture_output=True, text=True, timeout=900
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for step in (
        f"the {DEFAULT_OS} twin differs from EC2 in:",
        f"twin {DEFAULT_OS} (trixie): root and mirror",
        "systemd: running after",
        "cloud-init: done, datasource ec2; failed units: none",
        "submitted from 10.0.1.50: 250",
        "AUTH as twin-api-user over TLSv1",
        "from 192.0.2.50 (outside allowedCidrs): 554",
        "secret: only in /etc/postfix/relay_password",
        "rebooted: systemd running",
        "CloudWatch (moto), CMCRelay, InstanceId=i-0",  # the twin's publisher reached moto
        "  DeferredMessages = 0 Count",
        "  silent: OK",
        "in-place change, allowedCidrs + 10.0.9.0/24: cmc-relay-apply",
        "same boot True, same Postfix master True, network live True",
        f"service deferring; {len(scenario.REPLACED)} submitted ({{250}}), queued on the volume",
        "took its queue volume; clients refused for ",
        f"s (target {scenario.REPLACEMENT_TARGET}s: ",
        f"the queued messages delivered: {[1] * len(scenario.REPLACED)} times",
        "teardown: twin powered off, overlay unmounted, namespaces deleted, volume detached",
    ):
        assert step in output
    # First boot, after the reboot, the change in place, and the replacement.
    assert output.count("checks passed") == 4
    assert "time: " in output and "target " in output
    assert result.stdout.rstrip().endswith("PASS")
    assert MARK not in output
    assert_nothing_left(traces_before)


@pytest.mark.integration
@needs_root
def test_ctrl_c_during_the_boot_tears_everything_down(
    password_file: Path, traces_before: set[str]
) -> None:
    process = subprocess.Popen(
        sandbox_command(password_file),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as on a terminal: a shell without job control starts background jobs with
        # SIGINT ignored, and Python keeps an inherited SIG_IGN.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "user data:" in line:  # the boot is about to start
            process.send_signal(signal.SIGINT)
            break
    lines += process.stdout.readlines()
    output = "".join(lines)
    assert process.wait(timeout=120) == 130, output
    assert "interrupted; cleaned up" in output
    assert MARK not in output
    assert_nothing_left(traces_before)


@pytest.mark.integration
@needs_root
def test_a_failed_boot_is_reported_and_cleaned_up(
    password_file: Path,
    traces_before: set[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The mirror lacks Postfix: the sandbox names cloud-init's errors and the failed units,
    tears down and exits 1."""

    class TwinWithoutPostfix(TwinBoot):
        def build(self) -> twin_build.Twin:
            twin = super().build()
            mirror = tmp_path / "mirror"
            shutil.copytree(twin.mirror, mirror)
            for deb in mirror.rglob("postfix_*.deb"):
                deb.unlink()
            self.twin = dataclasses.replace(twin, mirror=mirror)
            return self.twin

    monkeypatch.setattr(cli, "TwinBoot", TwinWithoutPostfix)
    assert cli.main(["--password-file", str(password_file)]) == 1
    output = capsys.readouterr().out
    assert "FAILED: debian-13: the first boot failed" in output
    assert "cloud-init.log: " in output and "package-update-upgrade-install" in output
    assert "failed unit: cloud-final.service" in output
    assert output.rstrip().endswith("FAIL")
    assert MARK not in output
    assert_nothing_left(traces_before)


def test_without_root_it_stops_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main([]) == 2
    assert "sandbox: cannot run here: run as root" in capsys.readouterr().err


def test_a_missing_command_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereq.shutil, "which", lambda c: None if c == "debootstrap" else c)
    assert any("missing commands: debootstrap" in p for p in prereq.problems())


def passing_findings() -> scenario.Findings:
    """What a good sandbox run finds, as the judge reads it."""
    settings = RelaySettings(
        allowed_cidrs=("10.0.1.0/24",), sender_domain=SENDER_DOMAIN, operator_email=OPERATOR_EMAIL
    )
    record = {f.name: None for f in dataclasses.fields(MessageRecord)}
    relayed = MessageRecord(**{**record, "tls": True, "auth_user": "twin-api-user"})  # type: ignore[arg-type]
    cron = dataclasses.replace(
        relayed, mail_from=f"root@{SENDER_DOMAIN}", rcpt_tos=(OPERATOR_EMAIL,)
    )
    found = scenario.Findings(os=DEFAULT_OS, settings=settings, relayed=relayed, cron_mail=cron)
    found.outsider = Submission(accepted=False, code=554, reply="Relay access denied")
    found.first.verify_exit = found.after_reboot.verify_exit = 0
    found.samples_at_end = [Series("DeferredMessages", {}, {0: {"Maximum": 0.0}})]
    return found


def test_the_judge_fails_a_replacement_that_delivered_a_message_twice() -> None:
    found = passing_findings()
    deliveries = dict.fromkeys(scenario.REPLACED, 1)
    found.replaced = scenario.ReplacedHost(None, {"ok": True}, deliveries)  # type: ignore[arg-type]
    cli.judge_replacement(found)
    deliveries[scenario.REPLACED[0]] = 2
    with pytest.raises(cli.StepFailed, match="not delivered once each"):
        cli.judge_replacement(found)


def test_the_judge_fails_a_run_whose_metrics_never_arrived() -> None:
    found = passing_findings()
    cli.judge(found)
    found.samples_at_end = []
    with pytest.raises(cli.StepFailed, match="no metrics sample"):
        cli.judge(found)
