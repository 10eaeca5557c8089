"""A twin booted with systemd as PID 1: ``systemd-nspawn --boot`` in the twin's namespace.

The cached root stays untouched: each boot runs on an overlay (the cached root below, a
directory of this run above), so a reboot finds what the first boot wrote, and ``close``
leaves nothing behind. Commands run in the booted twin through ``nsenter`` into the
namespaces of its PID 1, with a clean environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from simworld.rig.process import wait_until

ROOT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REBOOT_EXIT: Final = 133  # nspawn's exit status when the container asked to reboot


class BootError(RuntimeError):
    """The twin did not boot or stop as it should."""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, breadth first."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop(0)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(child) for child in children.read().split()]
                found += kids
                queue += kids
    return found


def systemd_below(nspawn_pid: int) -> int | None:
    """The container's PID 1 (its systemd), as a PID of this machine."""
    for pid in descendants(nspawn_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return pid
    return None


def nspawn_command(root: Path, network: bool) -> list[str]:
    """nspawn for a command in ``root`` while it is not booted: /proc, /dev, and either this
    machine's network and resolver or no network at all."""
    nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root)]
    if not network:
        return [*nspawn, "--private-network"]
    # The image's /etc/resolv.conf points into resolved's /run, which only a boot fills:
    # this machine's resolver is put there, leaving the image's own file as it is.
    return (
        nspawn
        + ["--resolv-conf=off"]
        + [
            f"--bind-ro=/etc/resolv.conf:/run/systemd/resolve/{name}"
            for name in ("resolv.conf", "stub-resolv.conf")
        ]
    )


class Machine:
    """One twin: its overlay and its nspawn process across boots."""

    def __init__(self, name: str, lower: Path, work: Path, netns: str) -> None:
        self.name = name
        self.netns = netns
        self.work = work
        self.root = work / "root"
        self.upper, self.scratch = work / "upper", work / "overlay-work"
        for path in (self.root, self.upper, self.scratch):
            path.mkdir(parents=True)
        options = f"lowerdir={lower},upperdir={self.upper},workdir={self.scratch}"
        subprocess.run(
            ["mount", "-t", "overlay", "cmc-twin", "-o", options, str(self.root)], check=True
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.boots = 0

    # --- before the first boot: edits of the overlay (each one a listed deviation) --------

    def write(self, path: str, content: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)

    def offline(self, command: Sequence[str]) -> str:
        """A command in the twin's root while it is not running (no network)."""
        nspawn = [*nspawn_command(self.root, network=False), "--", *command]
        result = subprocess.run(nspawn, capture_output=True, text=True, check=False)
        if result.returncode:
            raise BootError(f"{' '.join(command)} in the twin's root: {result.stderr.strip()}")
        return result.stdout

    # --- boot, reboot, stop ---------------------------------------------------------------

    def boot(self) -> None:
        """Start systemd in the twin; returns once its PID 1 exists (not when booted)."""
        self.boots += 1
        console = (self.work / f"console-{self.boots}.log").open("wb")
        nspawn = [
            "nsenter", f"--net=/run/netns/{self.netns}", "--",
            "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
            f"--machine={self.name}", "-D", str(self.root),
            "--capability=CAP_NET_ADMIN,CAP_NET_RAW", "--resolv-conf=off", "--timezone=off",
            "--link-journal=no", "--console=pipe",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            nspawn, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
        )
        wait_until(self.init_pid, 30, "the twin's PID 1")

    def init_pid(self) -> int | None:
        """PID (on this machine) of the twin's systemd, once it runs."""
        if self.process is None:
            return None
        if self.process.poll() is not None:
            console = self.work / f"console-{self.boots}.log"
            said = console.read_text(errors="replace").strip().splitlines()[-10:]
            raise BootError(f"systemd-nspawn exited with {self.process.returncode}: {said}")
        return systemd_below(self.process.pid)

    def command(self, argv: Sequence[str]) -> list[str]:
        pid = self.init_pid()
        if pid is None:
            raise BootError("the twin is not running")
        enter = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"]
        return [*enter, "--", "env", "-i", f"PATH={ROOT_PATH}", "LANG=C.UTF-8", *argv]

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 120,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout,
            check=False, input=input,
        )  # fmt: skip
        if check and result.returncode:
            raise BootError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stdout}{result.stderr}"
            )
        return result

    def wait_booted(self, timeout: float) -> str:
        """systemd's state once start-up is over: ``running`` or ``degraded``."""
        wait_until(self._has_bus, 60, "the twin's D-Bus")
        state = self.run(
            ["systemctl", "is-system-running", "--wait"], timeout=timeout, check=False
        ).stdout.strip()
        return state

    def _has_bus(self) -> bool:
        return self.run(["systemctl", "is-system-running"], check=False).stdout.strip() not in (
            "",
            "offline",
        )

    def reboot(self, timeout: float = 120) -> None:
        """``systemctl reboot`` in the twin, and nspawn started again on the same root."""
        self.run(["systemctl", "reboot"], check=False)
        self.rebooted(timeout)

    def rebooted(self, timeout: float = 120) -> None:
        """Once the twin reboots (by itself or as asked), nspawn started again on the same
        root: nspawn ends when its container reboots, where EC2 starts the instance again."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BootError(f"the twin did not reboot within {timeout:g} s") from None
        if code != REBOOT_EXIT:
            raise BootError(f"systemd-nspawn exited {code} on reboot, not {REBOOT_EXIT}")
        self.boot()

    def attach_device(self, device: Path, path: str) -> None:
        """A block device of this machine (a loop device) appears in the running twin as
        ``path``, as an attached EBS volume appears on an instance: a device node made in the
        twin's /dev (nspawn's own tmpfs; no udev runs there to make it)."""
        rdev = os.stat(device).st_rdev
        major, minor = str(os.major(rdev)), str(os.minor(rdev))
        self.run(["mknod", "-m", "0660", path, "b", major, minor])

    def stop(self, timeout: float = 60) -> bool:
        """An orderly power-off (SIGRTMIN+4 to the twin's systemd), SIGKILL if it hangs; True
        if it powered off by itself (or was not running)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return True
        pid = systemd_below(process.pid)
        if pid is not None:
            os.kill(pid, signal.SIGRTMIN + 4)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            for child in descendants(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            process.kill()
            process.wait()
            return False
        return pid is not None

    def close(self) -> None:
        self.stop()
        for _ in range(50):
            if subprocess.run(["umount", str(self.root)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:  # still busy: detach it now, the kernel frees it with its last user
            subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True)
        shutil.rmtree(self.upper, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
