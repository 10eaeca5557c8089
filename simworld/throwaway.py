"""A throwaway machine: private namespaces around an overlay of ``/`` on tmpfs.

``unshare`` creates mount, pid, uts, ipc and network namespaces whose pid 1 is a tiny reaper.
Everything else enters them with ``nsenter``: so every process the sandbox starts is in its
pid namespace, and killing that pid 1 makes the kernel kill them all. Every mount (a tmpfs on
the rig's work directory, the overlay, /proc, /dev, /run in it) exists only in the private
mount namespace and vanishes with its last process: of the sandbox, only that work directory,
empty, is on the host's file system, and the rig removes it when it closes.

The tmpfs goes on a directory of its own, not over /tmp: the processes that play the network
run from this checkout and its virtualenv, which may well be under /tmp.

Paths: the work directory (``WORK_PREFIX``…) holds ``upper``/``work`` (the overlay's layers),
``root`` (the relay's root file system) and ``world`` (files of the processes that play the
network around the relay). The host reaches ``world`` through ``/proc/<pid>/root``; files of
the relay's root are only read and written by commands chrooted into it, so its symlinks cannot
lead to the host's files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NAMESPACES = ("--mount", "--uts", "--ipc", "--net", "--pid")
# setpriv: should this process die without cleaning up, unshare gets SIGKILL, and with
# --kill-child so does the namespaces' pid 1, which takes every process in them along.
_HOLDER = ("setpriv", "--pdeathsig", "KILL", "--", "unshare", *NAMESPACES, "--fork")
_HOLDER_OPTIONS = ("--kill-child", "--propagation", "private", "--")
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV: Mapping[str, str] = {"PATH": ROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}

# pid 1 of the namespaces: reaps orphans (a daemon's parent exits) so that none stays a zombie
# that still looks alive to `kill -0`. Only SIGKILL from outside ends it.
_REAPER = """
import os, time
print("READY", flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.1)
"""

WORK_PREFIX = "cmc-sandbox-"
# Run in the namespaces, not chrooted, with the work directory as $1. `mount -n`: libmount
# would otherwise keep notes in the host's /run/mount.
_MOUNTS = """
set -eu
mount -n -t tmpfs -o mode=0700 cmc-sandbox "$1"
cd "$1"
mkdir upper work root world
mount -n -t overlay cmc-sandbox -o lowerdir=/,upperdir=upper,workdir=work root
cd root
mount -n -t proc proc proc
# Kernel-wide knobs stay read-only; /sys too.
mount -n --bind proc/sys proc/sys
mount -n -o remount,bind,ro proc/sys
mount -n -t sysfs -o ro sysfs sys
# A private /dev with only the harmless device nodes, not the host's whole /dev.
mount -n -t tmpfs -o mode=0755 dev dev
for node in null zero full random urandom tty; do
  touch "dev/$node"
  mount -n --bind "/dev/$node" "dev/$node"
done
mkdir dev/shm
ln -s /proc/self/fd dev/fd
mount -n -t tmpfs -o mode=1777 shm dev/shm
mount -n -t tmpfs -o mode=0755 run run
mount -n -t tmpfs -o mode=1777 tmp tmp
"""


class RigError(RuntimeError):
    """The throwaway machine could not be set up or a command in it failed."""


class Unsupported(RigError):
    """This machine cannot host the sandbox: no permission or a kernel feature missing."""


class Rig:
    """The namespaces, the overlay and the processes started in them."""

    def __init__(self) -> None:
        self.work = tempfile.mkdtemp(prefix=WORK_PREFIX)
        self.root = f"{self.work}/root"
        self.world = f"{self.work}/world"
        self.pid: int | None = None  # host pid of the namespaces' pid 1
        self.processes: list[subprocess.Popen[Any]] = []
        self.transcript: list[str] = []  # every captured output, for the secret leak check
        try:
            self._enter_namespaces()
            mounted = self.run(
                ["sh", "-c", _MOUNTS, "mounts", self.work], chroot=False, check=False
            )
            if mounted.returncode:
                raise Unsupported(f"cannot mount the overlay: {mounted.stderr.strip()}")
        except BaseException:
            self.close()
            raise

    def _enter_namespaces(self) -> None:
        holder = subprocess.Popen(
            [*_HOLDER, *_HOLDER_OPTIONS, sys.executable, "-c", _REAPER],
            env=dict(BASE_ENV),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # read only on failure: unshare complains when killed
            text=True,
            start_new_session=True,
        )
        self.processes.append(holder)
        assert holder.stdout is not None and holder.stderr is not None
        if holder.stdout.readline().strip() != "READY":
            holder.wait()
            raise Unsupported(f"cannot create namespaces: {holder.stderr.read().strip()}")
        self.pid = _only_child(holder.pid)
        self.mount_ns = os.readlink(f"/proc/{self.pid}/ns/mnt")

    # --- processes ------------------------------------------------------------------------

    def command(self, argv: Sequence[str], chroot: bool = True) -> list[str]:
        """``argv`` as run in the namespaces, and in the relay's root unless ``chroot`` is off."""
        assert self.pid is not None
        enter = ["nsenter", f"--target={self.pid}", *NAMESPACES, "--"]
        return enter + (["chroot", self.root] if chroot else []) + list(argv)

    def run(
        self,
        argv: Sequence[str],
        *,
        chroot: bool = True,
        env: Mapping[str, str] = BASE_ENV,
        input: str | bytes | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; ``input`` may be bytes (a gzipped seed), the output is text."""
        raw = subprocess.run(
            self.command(argv, chroot),
            env=dict(env),
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            timeout=timeout,
            start_new_session=True,
        )
        out, err = (stream.decode(errors="replace") for stream in (raw.stdout, raw.stderr))
        result = subprocess.CompletedProcess(raw.args, raw.returncode, out, err)
        self.transcript += [out, err]
        if check and result.returncode:
            why = (err or out).strip()[-600:]
            raise RigError(f"{shlex.join(argv)} exited {result.returncode}: {why}")
        return result

    def start(
        self,
        argv: Sequence[str],
        *,
        log: str,
        env: Mapping[str, str] = BASE_ENV,
        stdin: int = subprocess.DEVNULL,
    ) -> subprocess.Popen[str]:
        """A background process in the namespaces, outside the chroot; its output goes to
        ``log``, a file in ``world``."""
        with open(self.host_path(log), "w") as output:
            process = subprocess.Popen(
                self.command(argv, chroot=False),
                env=dict(env),
                stdin=stdin,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def await_output(
        self, process: subprocess.Popen[str], log: str, pattern: str, timeout: float = 30
    ) -> re.Match[str]:
        """Wait until ``process`` writes ``pattern`` to its log: its way of saying it is ready."""
        deadline = time.monotonic() + timeout
        while True:
            text = Path(self.host_path(log)).read_text(errors="replace")
            if found := re.search(pattern, text, re.M):
                return found
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.returncode is not None else "is not ready"
                raise RigError(f"the process logging to {log} {state}: {text[-600:]}")
            time.sleep(0.05)

    # --- files ----------------------------------------------------------------------------

    def host_path(self, name: str) -> str:
        """A file in ``world`` as this process reaches it: through pid 1's root."""
        return f"/proc/{self.pid}/root{self.world}/{name}"

    def write(self, path: str, data: str | bytes, mode: str = "0644") -> None:
        """Create or replace a file in the relay's root (resolved inside the chroot)."""
        script = 'mkdir -p "$(dirname "$1")" && rm -f "$1" && cat >"$1" && chmod "$2" "$1"'
        self.run(["sh", "-c", script, "sh", path, mode], input=data)

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def processes_inside(self) -> dict[int, tuple[str, str]]:
        """Command line and environment of every process in the namespaces, by host pid."""
        found = {}
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/mnt") == self.mount_ns:
                    with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                        argv = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
                    with open(f"/proc/{entry}/environ", "rb") as environ:
                        env = environ.read().replace(b"\0", b" ").decode(errors="replace")
                    found[int(entry)] = (argv, env)
            except OSError:  # gone meanwhile
                continue
        return found

    # --- teardown -------------------------------------------------------------------------

    def close(self) -> list[int]:
        """Kill pid 1 of the namespaces (the kernel kills the rest), reap every process this
        rig started. Returns host pids still in the namespaces (none, normally)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        left = list(self.processes_inside()) if self.pid is not None else []
        for _ in range(50):  # reaped nsenter parents leave the mount namespace a moment later
            if not left:
                break
            time.sleep(0.1)
            left = list(self.processes_inside())
        with contextlib.suppress(OSError):  # still a mount point while a process lingers
            os.rmdir(self.work)
        return left


def _only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise RigError(f"unshare ({pid}) has children {children}, expected one")
    return int(children[0])
