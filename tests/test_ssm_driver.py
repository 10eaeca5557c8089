"""The SSM verification driver against botocore's Stubber, for every invocation state.

moto's SSM accepts send_command but does not simulate invocation states realistically (an
invocation is reported done at once, never Pending, Delayed, TimedOut or Undeliverable, and
the ping status is not the agent's): the Stubber answers exactly as the real API would, and
checks each request against botocore's model of the API. The clock is injected: no test sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from cmc_relay.components.ssm_verify import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    FAILED_STATES,
    POLL_SECONDS,
    WAITING_STATES,
    Outcome,
    failed_checks,
    invocation_outcome,
    main,
    ping_status,
    verify,
)
from cmc_relay.components.verification import (
    DRAIN,
    DRIVER_MODULE,
    HOST_SCRIPT,
    deployer_python,
    drain_driver_command,
)
from tests.pulumi_harness import driver_argv

ROOT = Path(__file__).parent.parent
INSTANCE = "i-0123456789abcdef0"
COMMAND = "0badc0de-0000-4000-8000-000000000001"
PASSING = json.dumps({"ok": True, "checks": [{"name": "postfix", "ok": True, "detail": "active"}]})
FAILING = json.dumps(
    {
        "ok": False,
        "checks": [
            {"name": "postfix", "ok": True, "detail": "active"},
            {"name": "relay-credentials", "ok": False, "detail": "password table missing"},
        ],
    }
)


@dataclass
class FakeClock:
    """Time that passes only when the driver sleeps."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def ssm() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "ssm",
        region_name="ap-northeast-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()  # every expected call was made


def online(stubber: Stubber, status: str | None = "Online") -> None:
    found = [{"InstanceId": INSTANCE, "PingStatus": status}] if status else []
    stubber.add_response(
        "describe_instance_information",
        {"InstanceInformationList": found},
        {"Filters": [{"Key": "InstanceIds", "Values": [INSTANCE]}]},
    )


def sent(
    stubber: Stubber, script: str = HOST_SCRIPT, purpose: str = "verification", timeout: Any = ANY
) -> None:
    stubber.add_response(
        "send_command",
        {"Command": {"CommandId": COMMAND}},
        {
            "InstanceIds": [INSTANCE],
            "DocumentName": "AWS-RunShellScript",
            "Comment": f"cmc-relay {purpose}",
            "TimeoutSeconds": timeout,
            "Parameters": {"commands": [script], "executionTimeout": ANY},
        },
    )


def invocation(
    stubber: Stubber,
    status: str,
    stdout: str = "",
    stderr: str = "",
    code: int = -1,
    details: str | None = None,
) -> None:
    stubber.add_response(
        "get_command_invocation",
        {
            "CommandId": COMMAND,
            "InstanceId": INSTANCE,
            "Status": status,
            "StatusDetails": details or status,
            "ResponseCode": code,
            "StandardOutputContent": stdout,
            "StandardErrorContent": stderr,
        },
        {"CommandId": COMMAND, "InstanceId": INSTANCE},
    )


def not_registered(stubber: Stubber) -> None:
    stubber.add_client_error(
        "get_command_invocation",
        service_error_code="InvocationDoesNotExist",
        http_status_code=400,
        expected_params={"CommandId": COMMAND, "InstanceId": INSTANCE},
    )


def test_the_host_script_waits_for_cloud_init_then_runs_the_verifier() -> None:
    assert HOST_SCRIPT.split("; ") == [
        "cloud-init status --wait >/dev/null",
        "/usr/local/sbin/cmc-relay-verify",
    ]


def test_pending_then_in_progress_then_success_passes_the_report_on(
    ssm: tuple[Any, Stubber],
) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber)
    invocation(stubber, "Pending")
    invocation(stubber, "InProgress")
    invocation(stubber, "Delayed")
    invocation(stubber, "Success", stdout=PASSING + "\n", code=0)
    clock = FakeClock()
    verdict = verify(client, INSTANCE, 600, clock, clock.sleep)
    assert verdict.exit_code == 0
    assert json.loads(verdict.stdout) == json.loads(PASSING)
    assert verdict.stderr == ""
    assert clock.slept == [POLL_SECONDS] * 4  # one wait before each look, none before sending


def test_invocation_not_registered_yet_is_waited_for(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber)
    not_registered(stubber)
    not_registered(stubber)
    invocation(stubber, "Success", stdout=PASSING, code=0)
    clock = FakeClock()
    verdict = verify(client, INSTANCE, 600, clock, clock.sleep)
    assert (verdict.exit_code, verdict.stdout) == (0, PASSING)


def test_failed_verification_shows_the_report_and_a_reason(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber)
    invocation(stubber, "InProgress")
    invocation(stubber, "Failed", stdout=FAILING, stderr="postmap: warning", code=1)
    clock = FakeClock()
    verdict = verify(client, INSTANCE, 600, clock, clock.sleep)
    assert verdict.exit_code == EXIT_FAILED
    assert verdict.stdout == ""
    *output, reason = verdict.stderr.splitlines()
    assert json.loads(output[0]) == json.loads(FAILING)  # the report itself
    assert output[1] == "postmap: warning"
    assert reason == (
        f"verification failed on {INSTANCE}: command Failed (Failed), exit status 1; "
        "failed checks: relay-credentials"
    )


@pytest.mark.parametrize(
    ("status", "details"),
    [
        ("TimedOut", "ExecutionTimedOut"),
        ("TimedOut", "DeliveryTimedOut"),
        ("Cancelled", "Cancelled"),
        ("Cancelling", "Cancelling"),
        ("Terminated", "Terminated"),
        ("Undeliverable", "Undeliverable"),
    ],
)
def test_every_other_final_state_fails(ssm: tuple[Any, Stubber], status: str, details: str) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber)
    invocation(stubber, "Pending")
    invocation(stubber, status, details=details)
    clock = FakeClock()
    verdict = verify(client, INSTANCE, 600, clock, clock.sleep)
    assert verdict.exit_code == EXIT_FAILED
    assert verdict.stderr == (
        f"verification failed on {INSTANCE}: command {status} ({details})"
    )  # no exit status: the script never finished


def test_instance_never_online_times_out_saying_so(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    online(stubber, None)  # not registered with Systems Manager yet
    online(stubber, "ConnectionLost")
    online(stubber, "ConnectionLost")  # t=10: one more poll would pass the 12 s deadline
    clock = FakeClock()
    verdict = verify(client, INSTANCE, 12, clock, clock.sleep)
    assert verdict.exit_code == EXIT_TIMEOUT
    assert verdict.stderr.startswith(
        f"instance {INSTANCE} never came online in Systems Manager within 12 s "
        "(ping status: ConnectionLost)"
    )
    assert "its ssm-agent policy" in verdict.stderr
    assert clock.now <= 12


def test_command_still_running_at_the_deadline_is_cancelled(ssm: tuple[Any, Stubber]) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber)
    invocation(stubber, "InProgress")
    invocation(stubber, "InProgress")
    stubber.add_response("cancel_command", {}, {"CommandId": COMMAND, "InstanceIds": [INSTANCE]})
    clock = FakeClock()
    verdict = verify(client, INSTANCE, 10, clock, clock.sleep)
    assert verdict.exit_code == EXIT_TIMEOUT
    assert verdict.stderr == (
        f"verification on {INSTANCE} timed out (command {COMMAND} still InProgress at the deadline)"
    )
    assert clock.now == 10


def test_main_prints_the_report_on_stdout(
    ssm: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]
) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber)
    invocation(stubber, "Success", stdout=PASSING + "\n", code=0)
    clock = FakeClock()
    argv = ["--instance-id", INSTANCE, "--region", "ap-northeast-1", "--timeout", "60"]
    assert main(argv, lambda region: client, clock, clock.sleep) == 0
    captured = capsys.readouterr()
    assert captured.out == PASSING + "\n"
    assert captured.err == ""


def test_main_prints_output_and_reason_on_stderr(
    ssm: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]
) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber)
    invocation(stubber, "Failed", stdout=FAILING, code=1)
    clock = FakeClock()
    argv = ["--instance-id", INSTANCE, "--region", "ap-northeast-1"]
    assert main(argv, lambda region: client, clock, clock.sleep) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1].startswith(f"verification failed on {INSTANCE}")


def test_main_reports_an_api_error_in_one_line(
    ssm: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]
) -> None:
    client, stubber = ssm
    stubber.add_client_error(
        "describe_instance_information", service_error_code="AccessDeniedException"
    )
    clock = FakeClock()
    argv = ["--instance-id", INSTANCE, "--region", "ap-northeast-1"]
    assert main(argv, lambda region: client, clock, clock.sleep) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("verification could not use Systems Manager: ")
    assert "AccessDeniedException" in err


def drain_argv(timeout: int) -> list[str]:
    """The drain command line the component gives its delete step, without the interpreter."""
    command = drain_driver_command(sys.executable, INSTANCE, "ap-northeast-1", timeout)
    return driver_argv(command)[2:]  # -m cmc_relay.components.ssm_verify


def test_run_mode_runs_the_given_script_and_passes_its_output_on(
    ssm: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]
) -> None:
    """The drain's delete step: the same driver, the drain script instead of the verifier,
    with the drain's own limit plus a margin for the command's delivery."""
    client, stubber = ssm
    online(stubber)
    sent(stubber, f"{DRAIN} --timeout 600", "drain", timeout=900)
    invocation(stubber, "InProgress")
    invocation(stubber, "Success", stdout="drained: the queue is empty after 12 s\n", code=0)
    clock = FakeClock()
    assert main(drain_argv(600), lambda region: client, clock, clock.sleep) == 0
    assert capsys.readouterr().out == "drained: the queue is empty after 12 s\n"


def test_run_mode_failure_names_the_purpose_and_what_the_script_said(
    ssm: tuple[Any, Stubber], capsys: pytest.CaptureFixture[str]
) -> None:
    client, stubber = ssm
    online(stubber)
    sent(stubber, f"{DRAIN} --timeout 60", "drain")
    remaining = "not drained: 3 messages (deferred: 3) remain in the queue after 60 s"
    invocation(stubber, "Failed", stderr=remaining, code=1)
    clock = FakeClock()
    assert main(drain_argv(60), lambda region: client, clock, clock.sleep) == EXIT_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err == [remaining, f"drain failed on {INSTANCE}: command Failed (Failed), exit status 1"]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (None, Outcome.WAIT),
        *[(state, Outcome.WAIT) for state in sorted(WAITING_STATES)],
        ("Success", Outcome.SUCCESS),
        *[(state, Outcome.FAILURE) for state in sorted(FAILED_STATES)],
        ("SomethingNew", Outcome.FAILURE),
    ],
)
def test_invocation_outcome(status: str | None, outcome: Outcome) -> None:
    assert invocation_outcome(status) is outcome


def test_ping_status_and_failed_checks_are_read_defensively() -> None:
    assert ping_status({"InstanceInformationList": []}) is None
    assert ping_status({"InstanceInformationList": [{"PingStatus": "Online"}]}) == "Online"
    assert failed_checks(FAILING) == ["relay-credentials"]
    assert failed_checks("not json") == []
    assert failed_checks("[1, 2]") == []


def test_the_driver_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cmc_relay.components.ssm_verify", "--help"],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--instance-id" in result.stdout


def run_deployer_command(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The stored command run as pulumi-command runs it (``sh -c``), from an unrelated directory."""
    return subprocess.run(
        ["/bin/sh", "-c", command], cwd="/", env=env, capture_output=True, text=True, check=False
    )


def test_a_stored_command_outlives_the_interpreter_that_deployed_it() -> None:
    """A destroy run from another checkout: the deploying interpreter is gone, the active
    virtualenv's has the package."""
    command = deployer_python("/gone/venv/bin/python", DRIVER_MODULE, ["--help"])
    venv = str(Path(sys.executable).parent.parent)
    result = run_deployer_command(command, {"PATH": "/nonexistent", "VIRTUAL_ENV": venv})
    assert result.returncode == 0, result.stderr
    assert "--instance-id" in result.stdout


def test_cmc_relay_python_is_tried_first(tmp_path: Path) -> None:
    marker = tmp_path / "python"
    marker.write_text('#!/bin/sh\necho "override $*"\n')
    marker.chmod(0o755)
    command = deployer_python(sys.executable, DRIVER_MODULE, ["--help"])
    result = run_deployer_command(
        command, {"PATH": "/usr/bin:/bin", "CMC_RELAY_PYTHON": str(marker)}
    )
    assert result.stdout.strip() == f"override -m {DRIVER_MODULE} --help"


def test_no_interpreter_with_the_package_is_a_clear_failure(tmp_path: Path) -> None:
    without_package = tmp_path / "python"
    without_package.write_text("#!/bin/sh\nexit 1\n")  # fails `import cmc_relay`
    without_package.chmod(0o755)
    command = deployer_python("/gone/python", DRIVER_MODULE, ["--help"])
    result = run_deployer_command(command, {"PATH": str(tmp_path), "CMC_RELAY_PYTHON": "/gone/too"})
    assert result.returncode == 127
    assert "set CMC_RELAY_PYTHON" in result.stderr
