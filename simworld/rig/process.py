"""Running and stopping the rig's processes: commands to completion, polls, one PID at a time."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

T = TypeVar("T")

REPO: Final = Path(__file__).resolve().parents[2]


def run(*cmd: str | Path, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a failure raises with its output in the message."""
    args = [str(c) for c in cmd]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return result


def command_lines() -> dict[str, bytes]:
    """Every running process's command line (its /proc cmdline, NUL-separated), by PID;
    those that exit meanwhile are left out."""
    lines = {}
    for entry in Path("/proc").iterdir():
        try:
            lines[entry.name] = (entry / "cmdline").read_bytes()
        except (NotADirectoryError, FileNotFoundError, ProcessLookupError):
            continue
    return lines


def wait_until(
    ready: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``ready`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout} s")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: this one process, by its PID."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
