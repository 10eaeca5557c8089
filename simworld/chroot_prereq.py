"""What the sandbox needs from this machine, checked before anything is started."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from cmc_relay.userdata.render import cloud_config
from simworld.chroot_host import BUNDLE_STORE, SETTINGS

COMMANDS = (
    *("unshare", "nsenter", "setpriv", "chroot", "mount", "ip", "cloud-init"),
    *("postfix", "postconf", "postmap", "dnsmasq", "dpkg-query"),
)
NAMESPACES = ("mnt", "pid", "uts", "ipc", "net")


@dataclass(frozen=True)
class Facts:
    """The machine as far as the sandbox cares."""

    euid: int
    missing_commands: tuple[str, ...]
    filesystems: frozenset[str]
    namespaces: frozenset[str]
    missing_packages: tuple[str, ...]


def unsuitable(facts: Facts) -> list[str]:
    """Why this machine cannot host the sandbox at all: privileges and kernel features."""
    found = []
    if facts.euid != 0:
        found.append("run as root: the sandbox creates namespaces and mounts (sudo make sandbox)")
    for fs in ("overlay", "tmpfs"):
        if fs not in facts.filesystems:
            found.append(f"the kernel lacks {fs} support (see /proc/filesystems)")
    absent = [ns for ns in NAMESPACES if ns not in facts.namespaces]
    if absent:
        found.append(f"the kernel lacks namespaces: {', '.join(absent)}")
    return found


def problems(facts: Facts) -> list[str]:
    """Why the sandbox cannot run here, one sentence each; empty if it can."""
    found = unsuitable(facts)
    if facts.missing_commands:
        found.append(
            f"missing commands: {', '.join(facts.missing_commands)} (make system-packages)"
        )
    if facts.missing_packages:
        names = " ".join(facts.missing_packages)
        found.append(
            f"the payload installs {names}, which the offline boot cannot download: "
            f"install them first (apt-get install {names})"
        )
    return found


def payload_packages() -> tuple[str, ...]:
    """The packages the Debian 12 payload asks cloud-init for."""
    packages: list[str] = cloud_config(SETTINGS, store=BUNDLE_STORE)["packages"]
    return tuple(packages)


def gather() -> Facts:
    """The facts of this machine."""
    missing = tuple(c for c in COMMANDS if shutil.which(c) is None)
    try:
        with open("/proc/filesystems") as table:
            filesystems = frozenset(line.split()[-1] for line in table if line.strip())
    except OSError:
        filesystems = frozenset()
    namespaces = frozenset(ns for ns in NAMESPACES if os.path.exists(f"/proc/self/ns/{ns}"))
    dpkg = shutil.which("dpkg-query") is not None  # else reported as a missing command
    not_installed = tuple(p for p in payload_packages() if dpkg and not _installed(p))
    return Facts(os.geteuid(), missing, filesystems, namespaces, not_installed)


def _installed(package: str) -> bool:
    query = ["dpkg-query", "-W", "-f=${Status}", package]
    result = subprocess.run(query, capture_output=True, text=True)
    return result.stdout.strip() == "install ok installed"


def versions() -> str:
    """cloud-init, Postfix and dnsmasq versions, for the report."""

    def out(*argv: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True)
        return (result.stdout or result.stderr).strip().splitlines()[0]

    cloud_init = out("cloud-init", "--version").split()[-1]
    postfix = out("postconf", "-dh", "mail_version")
    dnsmasq = out("dnsmasq", "--version").split()[2]
    return f"cloud-init {cloud_init}, Postfix {postfix}, dnsmasq {dnsmasq}"
