"""Run the on-host verifier through AWS Systems Manager and pass on its verdict.

    python -m cmc_relay.components.ssm_verify --instance-id ID --region REGION [--timeout SECONDS]
        [--run SCRIPT --purpose NAME]

Waits until the instance is online in Systems Manager, runs the verifier there once cloud-init
has finished (``AWS-RunShellScript``), and exits 0 with the verifier's JSON report on stdout;
otherwise non-zero, with what the command printed and a one-line reason on stderr. The
component runs it as a local command, so a failed check fails ``pulumi up``. It needs boto3 and
the deployer's AWS credentials, no inbound port: the instance's agent polls Systems Manager.
``--run`` runs that shell script instead of the verifier (the drain before a host's deletion),
judged by its exit status, ``--purpose`` naming it in messages.
"""

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from cmc_relay.components.verification import HOST_SCRIPT, TIMEOUT_SECONDS

POLL_SECONDS: Final = 5.0
EXIT_FAILED: Final = 1
EXIT_TIMEOUT: Final = 124  # as timeout(1)
# send_command refuses a delivery timeout below 30 seconds.
MIN_DELIVERY_SECONDS: Final = 30

ONLINE: Final = "Online"
WAITING_STATES: Final = frozenset({"Pending", "InProgress", "Delayed"})
FAILED_STATES: Final = frozenset(
    {"Failed", "TimedOut", "Cancelled", "Cancelling", "Terminated", "Undeliverable"}
)


class SsmClient(Protocol):
    """The part of boto3's SSM client the driver uses (a Stubber-wrapped client in tests)."""

    def describe_instance_information(self, **kwargs: Any) -> dict[str, Any]: ...
    def send_command(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_command_invocation(self, **kwargs: Any) -> dict[str, Any]: ...
    def cancel_command(self, **kwargs: Any) -> dict[str, Any]: ...


class Outcome(Enum):
    WAIT = "wait"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    stdout: str = ""
    stderr: str = ""


def ping_status(response: dict[str, Any]) -> str | None:
    """The instance's ping status in a describe_instance_information answer; None: unknown."""
    found = response.get("InstanceInformationList") or [{}]
    status = found[0].get("PingStatus")
    return str(status) if status else None


def invocation_outcome(status: str | None) -> Outcome:
    """What an invocation status means; None is an invocation not registered yet."""
    if status is None or status in WAITING_STATES:
        return Outcome.WAIT
    if status == "Success":
        return Outcome.SUCCESS
    return Outcome.FAILURE  # FAILED_STATES, and any state this driver does not know


def failed_checks(report: str) -> list[str]:
    """Names of the failed checks in a verifier report; [] if it is not one."""
    try:
        checks = json.loads(report).get("checks") or []
    except (ValueError, AttributeError):
        return []
    return [str(c.get("name")) for c in checks if isinstance(c, dict) and not c.get("ok")]


def failure_reason(instance_id: str, invocation: dict[str, Any], purpose: str) -> str:
    """One line: why the command failed."""
    status = invocation.get("Status")
    details = invocation.get("StatusDetails") or status
    reason = f"{purpose} failed on {instance_id}: command {status} ({details})"
    if invocation.get("ResponseCode", -1) >= 0:
        reason += f", exit status {invocation['ResponseCode']}"
    if status not in FAILED_STATES:
        reason += ", a status this driver does not know"
    failed = failed_checks(invocation.get("StandardOutputContent", ""))
    return reason + (f"; failed checks: {', '.join(failed)}" if failed else "")


def failure_text(instance_id: str, invocation: dict[str, Any], purpose: str) -> str:
    """The command's stdout (the report) and stderr, then the reason as the last line."""
    parts = [
        invocation.get("StandardOutputContent", "").rstrip(),
        invocation.get("StandardErrorContent", "").rstrip(),
        failure_reason(instance_id, invocation, purpose),
    ]
    return "\n".join(part for part in parts if part)


def never_online(instance_id: str, timeout: float, last_status: str | None) -> str:
    return (
        f"instance {instance_id} never came online in Systems Manager within {timeout:g} s "
        f"(ping status: {last_status or 'not registered'}): check that it is running, that its "
        "role has its ssm-agent policy and that it can reach Systems Manager over HTTPS"
    )


def invocation(client: SsmClient, command_id: str, instance_id: str) -> dict[str, Any] | None:
    """The command's invocation on the instance; None while Systems Manager has none yet."""
    try:
        return client.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
            return None
        raise


def verify(
    client: SsmClient,
    instance_id: str,
    timeout: float = TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    *,
    script: str = HOST_SCRIPT,
    purpose: str = "verification",
) -> Verdict:
    """Wait for the instance in Systems Manager, run the verifier (or ``script``), and judge
    the outcome."""
    deadline = clock() + timeout
    filters = [{"Key": "InstanceIds", "Values": [instance_id]}]
    while (status := ping_status(client.describe_instance_information(Filters=filters))) != ONLINE:
        if clock() + POLL_SECONDS > deadline:
            return Verdict(EXIT_TIMEOUT, stderr=never_online(instance_id, timeout, status))
        sleep(POLL_SECONDS)
    return run_script(
        client,
        instance_id,
        script,
        purpose,
        deadline=deadline,
        clock=clock,
        sleep=sleep,
    )


def run_script(
    client: SsmClient,
    instance_id: str,
    script: str,
    purpose: str,
    *,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Run a shell script as root on an online instance: its stdout, or why it failed."""
    remaining = max(int(deadline - clock()), MIN_DELIVERY_SECONDS)
    command_id = client.send_command(
        InstanceIds=[instance_id],
        DocumentName="AWS-RunShellScript",
        Comment=f"cmc-relay {purpose}",
        TimeoutSeconds=remaining,
        Parameters={"commands": [script], "executionTimeout": [str(remaining)]},
    )["Command"]["CommandId"]
    while True:
        sleep(POLL_SECONDS)  # an invocation is never there at once
        found = invocation(client, command_id, instance_id) or {}
        outcome = invocation_outcome(found.get("Status"))
        if outcome is Outcome.SUCCESS:
            return Verdict(0, stdout=found.get("StandardOutputContent", ""))
        if outcome is Outcome.FAILURE:
            return Verdict(EXIT_FAILED, stderr=failure_text(instance_id, found, purpose))
        if clock() >= deadline:
            # Best effort: the verdict is the timeout, whether or not the cancel lands.
            with contextlib.suppress(ClientError):
                client.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
            state = found.get("Status", "not registered")
            return Verdict(
                EXIT_TIMEOUT,
                stderr=f"{purpose} on {instance_id} timed out "
                f"(command {command_id} still {state} at the deadline)",
            )


def _boto3_client(region: str) -> SsmClient:
    client: SsmClient = boto3.client("ssm", region_name=region)
    return client


def main(
    argv: Sequence[str] | None = None,
    make_client: Callable[[str], SsmClient] = _boto3_client,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cmc_relay.components.ssm_verify",
        description="Run the CMC relay host's verifier through AWS Systems Manager.",
    )
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--timeout", type=float, default=TIMEOUT_SECONDS, help="seconds")
    parser.add_argument("--run", default=HOST_SCRIPT, help="shell script instead of the verifier")
    parser.add_argument("--purpose", default="verification", help="what --run does, for messages")
    args = parser.parse_args(argv)
    try:
        verdict = verify(
            make_client(args.region),
            args.instance_id,
            args.timeout,
            clock,
            sleep,
            script=args.run,
            purpose=args.purpose,
        )
    except (BotoCoreError, ClientError) as error:
        reason = f"{args.purpose} could not use Systems Manager: {error}"
        verdict = Verdict(EXIT_FAILED, stderr=reason)
    if verdict.stdout:
        print(verdict.stdout.rstrip("\n"))
    if verdict.stderr:
        print(verdict.stderr, file=sys.stderr)
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
