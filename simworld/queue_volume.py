"""The queue volume, simulated: an image file on a loop device stands for the EBS volume a
relay host's Postfix queue lives on (``userdata/scripts/cmc-relay-queue-volume``), attached to
one relay after the other as EC2 moves the volume to a replacement host.

On the rig everything runs in this machine's own mount namespace: the rig's Postfix, started
later with ``ip netns exec``, sees the mount there. A twin gets the device inside its machine
(``Machine.attach_device``). Each loop device is detached by its own name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from simworld.rig.postfix import Postfix
from simworld.rig.process import REPO, run

QUEUE_VOLUME_SCRIPT: Final = REPO / "userdata" / "scripts" / "cmc-relay-queue-volume"
QUEUE_LABEL: Final = "cmc-relay-queue"


class Volume:
    """A blank, sparse image file of ``size_mb``: the volume. ``attach`` gives it a loop device
    (the block device a host sees), ``detach`` takes that away again, as EC2 attaches a volume
    to one instance after the other; the image and its contents stay until ``remove``."""

    def __init__(self, image: Path, size_mb: int = 64) -> None:
        self.image = image
        with image.open("wb") as file:
            file.truncate(size_mb * 1024 * 1024)
        self.device: Path | None = None

    def attach(self) -> Path:
        assert self.device is None, f"{self.image} is attached as {self.device}"
        self.device = Path(run("losetup", "--find", "--show", self.image).stdout.strip())
        return self.device

    def in_use(self) -> bool:
        """Whether anything holds the attached device: a mount in any mount namespace (the
        kernel refuses an exclusive open of a block device a file system is mounted from)."""
        assert self.device is not None
        try:
            os.close(os.open(self.device, os.O_RDONLY | os.O_EXCL))
        except OSError as error:
            if error.errno == errno.EBUSY:
                return True
            raise
        return False

    def detach(self) -> None:
        """Unmount it where this machine's namespace has it mounted, and free the loop device
        (by its name; one still mounted elsewhere is freed by the kernel with its last user)."""
        device, self.device = self.device, None
        if device is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["umount", "--all-targets", device], capture_output=True, check=False)
        subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)

    def remove(self) -> None:
        self.detach()
        self.image.unlink(missing_ok=True)


@contextlib.contextmanager
def loop_device(image: Path, size_mb: int = 64) -> Iterator[Path]:
    """A blank image file of ``size_mb`` as a block device, for as long as the block runs."""
    volume = Volume(image, size_mb)
    try:
        yield volume.attach()
    finally:
        volume.detach()


def take_queue_volume(
    postfix: Postfix, device: Path, wait: float = 0
) -> subprocess.CompletedProcess[str]:
    """Run the shipped script as a relay host's setup does, on this relay's Postfix (the
    fstab entry goes next to its config, not to this machine's /etc/fstab); not checked."""
    command = [
        QUEUE_VOLUME_SCRIPT, "--device", device, "--config-dir", postfix.config_dir,
        "--wait", str(int(wait)), "--fstab", postfix.config_dir.parent / "fstab",
    ]  # fmt: skip
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, check=False
    )


def release_queue_volume(postfix: Postfix) -> float:
    """What stopping a host does to its volume: Postfix stops, the file system is unmounted
    (EC2 then detaches it). Returns when that began (``time.monotonic``)."""
    started = time.monotonic()
    postfix.stop()
    run("umount", postfix.queue_dir)
    return started


def queue_source(postfix: Postfix) -> str:
    """The device mounted on this relay's queue directory ('' if none)."""
    found = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(postfix.queue_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip()
