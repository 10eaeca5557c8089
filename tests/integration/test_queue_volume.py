"""The queue volume (``userdata/scripts/cmc-relay-queue-volume``) on the rig's real Postfix: a
loop-mounted image file stands for the EBS volume that moves to a replacement host.

A relay adopts a blank volume with the mail it has queued; stopped, its volume goes to a
second relay (another host of the same service), which runs the same script at its boot and
delivers every message exactly once when the service comes back. Without a volume the script
fails and Postfix stays down, rather than queue mail on a disk the next replacement deletes.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from cmc_relay.components.verification import QUEUE_COUNT
from simworld.netns_rig import Rig, Secrets, add_relay, new_mails, run
from simworld.queue_volume import (
    QUEUE_LABEL,
    loop_device,
    queue_source,
    release_queue_volume,
    take_queue_volume,
)

pytestmark = pytest.mark.integration


def queue_count(rig: Rig) -> tuple[int, str]:
    """What the guard before a host's deletion finds on this relay (verification.QUEUE_COUNT,
    from the queue's files: postqueue -j can miss a message Postfix moves meanwhile)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(rig.postfix.config_dir)}
    done = subprocess.run(
        ["sh", "-c", QUEUE_COUNT], capture_output=True, text=True, env=env, check=False
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def postfix_running(rig: Rig) -> bool:
    status = ("postfix", "-c", str(rig.postfix.config_dir), "status")
    return subprocess.run(status, capture_output=True, check=False).returncode == 0


def test_the_queue_moves_with_its_volume_and_every_message_is_delivered_once(
    rig: Rig, secrets: Secrets
) -> None:
    mails = new_mails(8)
    rig.queue_deferred(mails)
    root = rig.postfix.config_dir.parent
    with contextlib.ExitStack() as stack, loop_device(root / "queue.img") as device:
        # The running host adopts its new, blank volume: its queue goes onto it.
        adopted = take_queue_volume(rig.postfix, device)
        assert adopted.returncode == 0, adopted.stderr
        assert queue_source(rig.postfix) == str(device)
        assert run("blkid", "-o", "value", "-s", "LABEL", device).stdout.strip() == QUEUE_LABEL
        assert f"LABEL={QUEUE_LABEL} {rig.postfix.queue_dir} ext4" in (root / "fstab").read_text()
        rig.postfix.start()
        assert queue_count(rig) == (1, f"{len(mails)} messages queued")

        # The replacement: a second host of the same service, booted beside the first.
        replacement = add_relay(stack, rig, root / "replacement", 1, secrets)
        stopped = release_queue_volume(rig.postfix)  # EC2 stops the old host, detaches
        taken = take_queue_volume(replacement.postfix, device)  # the new host's boot
        assert taken.returncode == 0, taken.stderr
        replacement.postfix.start()
        refused_for = time.monotonic() - stopped
        print(f"port 25 of the moving queue's host refused for {refused_for:.1f} s")

        assert queue_source(replacement.postfix) == str(device)
        again = take_queue_volume(replacement.postfix, device)  # the setup re-run in place
        assert again.returncode == 0, again.stderr
        assert f"queue already on {device}" in again.stdout
        assert postfix_running(replacement), "a re-run stopped Postfix"
        assert queue_count(replacement) == (1, f"{len(mails)} messages queued")
        rig.standin.up()
        replacement.postfix.flush()
        replacement.delivered_once(mails)
        assert queue_count(replacement) == (0, "queue empty")


def test_no_volume_no_postfix(rig: Rig) -> None:
    missing = take_queue_volume(rig.postfix, Path("/dev/cmc-relay-no-such-volume"), wait=2)
    assert missing.returncode == 1
    assert "not attached after 2 s" in missing.stderr
    assert not postfix_running(rig), "Postfix left running on the root disk's spool"


def test_a_volume_of_something_else_is_not_formatted(rig: Rig) -> None:
    with loop_device(rig.postfix.config_dir.parent / "other.img") as device:
        run("mkfs.ext4", "-q", "-L", "data", device)
        refused = take_queue_volume(rig.postfix, device)
        assert refused.returncode == 1
        assert "something other than an ext4 cmc-relay-queue" in refused.stderr
        assert run("blkid", "-o", "value", "-s", "LABEL", device).stdout.strip() == "data"
        assert queue_source(rig.postfix) == ""


def test_mail_the_root_disks_spool_took_before_the_volume_came_is_carried_onto_it(
    rig: Rig, secrets: Secrets
) -> None:
    """A replacement's Postfix, started by its package, answers on the root disk's spool before
    its setup mounts the volume holding the old host's queue over it: what it took there (and
    what sendmail dropped with Postfix stopped) is carried into the volume's queue, and each
    message of both is delivered once. The root disk keeps no copy: a second run on it (the
    volume taken off again) carries nothing."""
    old_host_mails, root_disk_mails = new_mails(4), new_mails(3)
    dropped = new_mails(1)  # into maildrop: postdrop writes there with Postfix stopped
    rig.queue_deferred(old_host_mails)
    root = rig.postfix.config_dir.parent
    with contextlib.ExitStack() as stack, loop_device(root / "queue.img") as device:
        adopted = take_queue_volume(rig.postfix, device)
        assert adopted.returncode == 0, adopted.stderr
        release_queue_volume(rig.postfix)

        # The replacement's Postfix runs on its root disk's spool, as its package started it.
        replacement = add_relay(stack, rig, root / "replacement", 1, secrets)
        replacement.queue_deferred(root_disk_mails)
        replacement.postfix.stop()
        replacement.sendmail(dropped[0])
        taken = take_queue_volume(replacement.postfix, device)
        assert taken.returncode == 0, taken.stderr
        carried = len(root_disk_mails) + len(dropped)
        assert f"carried {carried} messages from the root disk's spool" in taken.stdout
        # Counted with Postfix stopped: once it runs, pickup turns the maildrop file into an
        # incoming one, and for a moment both are there.
        assert queue_count(replacement) == (1, f"{len(old_host_mails) + carried} messages queued")
        replacement.postfix.start()
        rig.standin.up()
        replacement.postfix.flush()
        replacement.delivered_once([*old_host_mails, *root_disk_mails, *dropped])

        release_queue_volume(replacement.postfix)
        again = take_queue_volume(replacement.postfix, device)
        assert again.returncode == 0, again.stderr
        assert "carried 0 messages from the root disk's spool" in again.stdout
