"""``python -m sandbox``: the relay host on a twin of the default OS's EC2 image, end to end.

Builds (or reuses) the twin, boots it with systemd as PID 1 from the payload `pulumi up` would
render, relays a message, refuses an outsider, runs the on-host verifier, reboots, verifies
again, has cron's mail to root reach operatorEmail (its sender rewritten), shows what an operator
would see in (moto's) CloudWatch (the newest sample of every metric, the alarms' states),
applies a config change in place, replaces the host by a second twin of its stack that takes
over its queue volume (a loop device) with deferred mail on it, and tears everything down (also
on failure or Ctrl-C). Every stage is printed as it ends, with the time since start; the change
in place, the replacement's refused window and the run are set against their targets.

exit: 0 passed, 1 a step failed (named), 2 this machine cannot run the sandbox, 130 interrupted
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from cmc_relay.userdata.render import QUEUE_DEVICE
from cmc_relay.userdata.settings import DEFAULT_OS
from simworld.queue_volume import Volume
from simworld.twin import scenario
from simworld.twin.build import BuildError
from simworld.twin.machine import BootError
from simworld.twin.prereq import problems
from simworld.twin.session import DEVIATIONS, TwinBoot, clean_log_problems

# Targets on this project's 2-core machine (a benchmark: printed, never asserted by a test).
TARGET_FRESH_SECONDS = 180
TARGET_CACHED_SECONDS = 60


class StepFailed(Exception):
    """A step's outcome was wrong; the message says what was expected."""


class Report:
    """Progress lines with the time since start; never prints the secret."""

    def __init__(self, secret: str, out: TextIO | None = None) -> None:
        self.secret, self.started = secret, time.monotonic()
        self.out = out or sys.stdout  # the stdout of now, not of import time

    def line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        text = text.replace(self.secret, "***")
        print(f"[{elapsed:6.1f}s] {text}", file=self.out, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def judge(findings: scenario.Findings) -> None:
    """What the first boot and the reboot must have shown; raises on the first that is wrong."""
    first, again = findings.first, findings.after_reboot
    if first.cloud_init.get("errors") or first.log_problems:
        raise StepFailed(f"cloud-init reported problems: {first.log_problems[:5]}")
    if findings.relayed is None or not findings.relayed.tls or not findings.relayed.auth_user:
        raise StepFailed(f"the message did not arrive with AUTH over TLS: {findings.relayed}")
    if findings.outsider is None or findings.outsider.accepted:
        raise StepFailed("the relay accepted mail from outside allowedCidrs")
    for when, boot in (("first boot", first), ("after the reboot", again)):
        if boot.failed_units or boot.verify_exit:
            raise StepFailed(
                f"{when}: failed units {boot.failed_units}, checks {boot.failed_checks()}"
            )
    cron, settings = findings.cron_mail, findings.settings
    if (
        cron is None
        or settings is None
        or (cron.mail_from, cron.rcpt_tos)
        != (
            f"root@{settings.sender_domain}",
            (settings.operator_email,),
        )
    ):
        raise StepFailed(f"cron's mail to root did not reach operatorEmail rewritten: {cron}")
    if not findings.samples_at_end:
        raise StepFailed("no metrics sample from the twin ever reached CloudWatch (moto)")
    wrong = [p for p in findings.secret_places if not p.startswith("/etc/postfix/relay_password")]
    if wrong:
        raise StepFailed(f"the password appears in: {', '.join(wrong)}")


def judge_in_place(findings: scenario.Findings) -> None:
    seen = findings.in_place
    if seen is None or seen.applied.result.returncode != 0:
        said = seen.applied.result.stderr.strip()[-300:] if seen else "not run"
        raise StepFailed(f"the change was not applied in place: {said}")
    if not (seen.same_boot and seen.same_postfix_master and seen.live):
        raise StepFailed(f"the change restarted the host or Postfix, or is not live: {seen}")


def judge_replacement(findings: scenario.Findings) -> None:
    seen = findings.replaced
    if seen is None or seen.verify.get("ok") is not True:
        raise StepFailed(f"the replacement was not verified: {seen.verify if seen else 'not run'}")
    if set(seen.deliveries.values()) != {1}:
        raise StepFailed(f"the queued messages were not delivered once each: {seen.deliveries}")


def run(boot: TwinBoot, volume: Volume, report: Report) -> tuple[float, float]:
    """Every step, reported as it completes; returns the build's share of the time and the
    time to a relay verified again after its reboot (what the targets bound)."""
    findings = scenario.Findings(os=boot.image.os)
    scenario.first_boot(boot, findings, report.line, volume)
    report.line(f"secret: only in {', '.join(findings.secret_places)} on the host")
    scenario.reboot(boot, findings, report.line)
    scenario.cron_mail(boot, findings, report.line)
    scenario.operator_view(boot, findings, report.line)
    judge(findings)
    relay_seconds = report.elapsed()
    scenario.change_in_place(boot, findings, report.line)  # a later `pulumi up`, in place
    judge_in_place(findings)
    scenario.replacement(boot, volume, findings, report.line)  # a `pulumi up` that replaces it
    judge_replacement(findings)
    assert boot.twin is not None
    return (0.0 if boot.twin.cached else boot.twin.build_seconds), relay_seconds


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument(
        "--password-file", type=Path, help="the SMTP password to use (default: a random one)"
    )
    parser.add_argument(
        "--os", default=DEFAULT_OS, help="the twin to boot (default: the default os)"
    )
    args = parser.parse_args(argv)
    password = (
        args.password_file.read_text().strip() if args.password_file else secrets.token_urlsafe(24)
    )
    report = Report(password)
    found = problems()
    if found:
        for problem in found:
            print(f"sandbox: cannot run here: {problem}", file=sys.stderr)
        return 2
    handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    for signum in (signal.SIGTERM, signal.SIGHUP):  # unwind like Ctrl-C, so teardown runs
        signal.signal(signum, _interrupt)
    report.line(f"the {args.os} twin differs from EC2 in:")
    for deviation in DEVIATIONS:
        report.line(f"  - {deviation}")
    boot = TwinBoot(args.os, password, queue_device=QUEUE_DEVICE)
    volume = Volume(boot.work / "queue.img", size_mb=128)
    outcome, build_seconds, relay_seconds = 0, 0.0, 0.0
    try:
        build_seconds, relay_seconds = run(boot, volume, report)
    except KeyboardInterrupt:
        report.line("interrupted")
        outcome = 130
    except (StepFailed, BuildError, BootError, scenario.BootFailed, TimeoutError) as error:
        report.line(f"FAILED: {error}")
        diagnostics(boot, report)
        outcome = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut teardown
        boot.close()
        volume.remove()  # once no twin holds it
        report.line(
            "teardown: twin powered off, overlay unmounted, namespaces deleted, volume detached"
        )
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if outcome == 0:
        target = TARGET_CACHED_SECONDS if build_seconds == 0 else TARGET_FRESH_SECONDS
        how = "root cached" if build_seconds == 0 else f"twin built in {build_seconds:.0f}s"
        report.line(
            f"time: {relay_seconds:.0f}s to the relay verified after its reboot ({how}); "
            f"target {target}s: {relay_seconds / target:.2f} of it; {report.elapsed():.0f}s in all"
        )
    report.line({0: "PASS", 1: "FAIL", 130: "interrupted; cleaned up"}[outcome])
    return outcome


def diagnostics(boot: TwinBoot, report: Report) -> None:
    """cloud-init's error lines and the failed units, after a failure."""
    if boot.machine is None:
        return
    log = boot.machine.upper / "var/log/cloud-init.log"  # written by the twin, kept in its overlay
    problems = clean_log_problems(log.read_text(errors="replace")) if log.exists() else []
    for line in problems[-20:]:
        report.line(f"  cloud-init.log: {line}")
    for console in sorted(boot.machine.work.glob("console-*.log")):
        for line in console.read_text(errors="replace").splitlines()[-5:]:
            report.line(f"  {console.name}: {line}")
    try:
        for unit in boot.failed_units():
            report.line(f"  failed unit: {unit}")
            for line in boot.journal("-u", unit, "-n", "10").splitlines():
                report.line(f"    {line}")
    except BootError:
        report.line("  (the twin is not running: no unit states)")


if __name__ == "__main__":
    sys.exit(main())
