"""What the numbers were measured on: throughput here is bounded by the relay's own per-message
work, so the CPU and whatever else ran at the time matter."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _first_line(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return (
        (result.stdout or result.stderr).strip().splitlines()[0] if result.returncode == 0 else ""
    )


def cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` of /proc/cpuinfo's text (empty if there is none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(cpuinfo.read_text() if cpuinfo.exists() else ""),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": _first_line("postconf", "-dh", "mail_version"),
        "dnsmasq": _first_line("dnsmasq", "--version").split("  ")[0],  # not the copyright
        "load_average": list(os.getloadavg()),
    }
