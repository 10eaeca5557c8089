"""What a twin boot needs of this machine, named when it is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Final

COMMANDS: Final = ("debootstrap", "systemd-nspawn", "nsenter", "ip", "dnsmasq", "gpg", "dpkg-deb")


def problems() -> list[str]:
    """Why a twin cannot boot here; empty if it can."""
    found = []
    if os.geteuid() != 0:
        found.append(
            "run as root: the twin needs namespaces, mounts and nspawn (sudo make sandbox)"
        )
    missing = [command for command in COMMANDS if not shutil.which(command)]
    if missing:
        found.append(f"missing commands: {', '.join(missing)} (make system-packages)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        found.append("the kernel lacks overlay support (see /proc/filesystems)")
    return found
