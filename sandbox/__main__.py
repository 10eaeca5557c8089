"""``python -m sandbox``: boot the relay host locally, relay a message, verify, tear down.

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

from sandbox import prereq
from sandbox.session import (
    ALLOWED_CIDR,
    API_USER,
    AWS_IP,
    AWS_PORT,
    CLIENT_IP,
    CMC_IPS,
    OUTSIDER_IP,
    OVERLAY_CHANGES,
    RELAY_IP,
    RESOLVER_IP,
    SETTINGS,
    Sandbox,
)
from simworld.throwaway import RigError, Unsupported
from userdata.render import USER_DATA_LIMIT, postfix_parameters


class StepFailed(Exception):
    """A step's outcome was wrong; the message says what was expected."""


class Report:
    """Progress lines with the time since start; never prints the secret."""

    def __init__(self, secret: str, out: TextIO = sys.stdout) -> None:
        self.secret, self.out, self.started = secret, out, time.monotonic()

    def line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        text = text.replace(self.secret, "***")
        print(f"[{elapsed:5.1f}s] {text}", file=self.out, flush=True)


def run(sandbox: Sandbox, report: Report) -> None:
    """Every step, reported as it completes; raises on the first that fails."""
    rig = sandbox.machine
    report.line(
        f"namespaces: mount, pid, uts, ipc, net (their pid 1 is host pid {rig.pid}); "
        "overlay of / with its upper layer on a tmpfs only they see"
    )
    sandbox.wire_network()
    report.line(
        f"network: relay eth0 {RELAY_IP}/24; client {CLIENT_IP}, outsider {OUTSIDER_IP}, "
        f"CMC {' '.join(CMC_IPS)}, VPC resolver {RESOLVER_IP}, AWS {AWS_IP}:{AWS_PORT}"
    )
    sandbox.start_syslog()
    arn = sandbox.start_secrets_manager()
    report.line(f"Secrets Manager (moto): {arn} holds username {API_USER} and a password")
    sandbox.start_resolver()
    sandbox.start_standin()
    report.line(
        f"CMC stand-in on {' '.join(CMC_IPS)} port {SETTINGS.smtp_port}: STARTTLS with a test "
        f"CA, AUTH for {API_USER}; VPC resolver answers {SETTINGS.relay_host} with both"
    )
    document, packed = sandbox.render()
    report.line(
        f"user data: render_user_data({SETTINGS.os}, plan {SETTINGS.plan}, {ALLOWED_CIDR}): "
        f"{len(document.encode())} bytes, {len(packed)} gzipped as EC2 gets it "
        f"(limit {USER_DATA_LIMIT}); seeded to the NoCloud datasource"
    )
    sandbox.prepare_overlay(packed)
    for change in OVERLAY_CHANGES:
        report.line(f"overlay only: {change}")
    for stage in sandbox.boot():
        report.line(f"cloud-init {stage.command}: exit {stage.returncode} ({stage.seconds:.1f}s)")
    status = sandbox.cloud_init_status()
    if "status: done" not in status:
        raise StepFailed(f"cloud-init did not finish cleanly: {' '.join(status.split())}")
    report.line("cloud-init status: done")

    message_id = f"<{secrets.token_hex(8)}@sandbox.example.test>"
    sent = sandbox.submit(CLIENT_IP, message_id)
    if not sent["accepted"]:
        raise StepFailed(f"the relay refused the client in allowedCidrs: {sent['reply']}")
    report.line(f"submitted from {CLIENT_IP} to {RELAY_IP}:25: {sent['code']} {sent['reply']}")
    record = sandbox.wait_for_message(message_id)
    if record.auth_user != API_USER or not record.tls:
        raise StepFailed(
            f"arrived without AUTH over TLS: user {record.auth_user}, tls {record.tls}"
        )
    trusted = "Trusted TLS connection established to " + SETTINGS.relay_host
    if trusted not in sandbox.mail_log():
        raise StepFailed(f"Postfix did not log {trusted!r}: the test CA is not trusted")
    report.line(
        f"delivered to the stand-in from {record.client_ip}: AUTH as {record.auth_user} over "
        f"{record.tls_version}; Postfix logged '{trusted}'"
    )
    refused = sandbox.submit(OUTSIDER_IP, f"<{secrets.token_hex(8)}@outside.example.test>")
    if refused["accepted"]:
        raise StepFailed(f"the relay accepted mail from {OUTSIDER_IP}, outside allowedCidrs")
    report.line(
        f"refused from {OUTSIDER_IP} (outside allowedCidrs): {refused['code']} {refused['reply']}"
    )

    code, verified = sandbox.verify()
    failed = [c for c in verified["checks"] if not c["ok"]]
    for check in failed:
        report.line(f"verifier: FAILED {check['name']}: {check['detail']}")
    if code or failed:
        raise StepFailed("cmc-relay-verify failed: " + ", ".join(c["name"] for c in failed))
    names = {c["name"] for c in verified["checks"]}
    staged = len(postfix_parameters(SETTINGS))
    report.line(
        f"verifier (on the host, cmc-relay-verify): all {len(names)} checks passed, "
        f"{staged} of them Postfix settings"
    )

    leaks, searched = sandbox.secret_leaks()
    if leaks:
        raise StepFailed(f"the password appears in: {', '.join(leaks)}")
    report.line(f"secret: absent from {searched} outputs, logs, argument lists and environments")


def diagnostics(sandbox: Sandbox, report: Report) -> None:
    """The last lines of the boot and mail logs, after a failure."""
    boot = sandbox.machine.run(["tail", "-n", "25", "/var/log/cloud-init-output.log"], check=False)
    for name, text in (("cloud-init-output.log", boot.stdout), ("mail log", sandbox.mail_log())):
        for line in text.splitlines()[-25:]:
            report.line(f"  {name}: {line}")


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument(
        "--password-file", type=Path, help="the SMTP password to use (default: a random one)"
    )
    args = parser.parse_args(argv)
    password = (
        args.password_file.read_text().strip() if args.password_file else secrets.token_urlsafe(24)
    )
    report = Report(password)
    problems = prereq.problems(prereq.gather())
    if problems:
        for problem in problems:
            print(f"sandbox: cannot run here: {problem}", file=sys.stderr)
        return 2
    report.line(f"prerequisites: root, namespaces, overlay; {prereq.versions()}")
    # SIGTERM and SIGHUP unwind like Ctrl-C, so that teardown runs.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    sandbox = Sandbox(password)
    outcome = 0
    try:
        sandbox.open()
        run(sandbox, report)
    except KeyboardInterrupt:
        report.line("interrupted")
        outcome = 130
    except Unsupported as error:
        print(f"sandbox: cannot run here: {error}", file=sys.stderr)
        outcome = 2
    except (StepFailed, RigError) as error:
        report.line(f"FAILED: {error}")
        if sandbox.rig is not None:
            diagnostics(sandbox, report)
        outcome = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut teardown
        left = sandbox.close()
        report.line(
            "teardown: namespaces and their mounts gone"
            + (f"; still running: {left}" if left else ", no process left")
        )
    outcome = 1 if outcome == 0 and left else outcome
    report.line({0: "PASS", 1: "FAIL", 2: "not run", 130: "interrupted; cleaned up"}[outcome])
    return outcome


if __name__ == "__main__":
    sys.exit(main())
