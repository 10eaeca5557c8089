"""The queue's file system, watched and guarded, with real Postfix (issue 21).

Postfix's queue directory is a small tmpfs of its own (as on the host, where the queue may have
a volume of its own). The real publisher measures that file system, and the rendered
queue_minfree makes the real smtpd refuse new mail once too little of it is free, while the
mail already queued stays and is delivered once room is made.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simworld.netns_rig import MakeRig, new_mail, new_mails, relay_settings, run
from tests.integration.test_metrics import publisher_for

pytestmark = pytest.mark.integration

SPOOL_BYTES = 16 * 1024 * 1024
MESSAGE_SIZE_LIMIT = 1_024_000  # queue_minfree: 2 x = 2,048,000 bytes
# Less than queue_minfree, more than the 1.5 x message_size_limit (1,536,000 bytes) below
# which Postfix refuses mail even without queue_minfree: what the setting adds.
LEFT_FREE = 1_800_000


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_nearly_full_queue_is_measured_and_refuses_new_mail_but_keeps_the_queued(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    settings = relay_settings(message_size_limit=MESSAGE_SIZE_LIMIT)
    rig = make_rig(settings, spool_size=f"{SPOOL_BYTES // 1024}k")
    conf = rig.postfix.config_dir
    # Live in Postfix, and no "should be at least 1.5*message_size_limit" complaint.
    assert run("postconf", "-c", conf, "-h", "queue_minfree").stdout.strip() == "2048000"
    assert "queue_minfree" not in run("postfix", "-c", conf, "check").stderr

    rig.standin.down()  # an outage: what is accepted stays queued
    queued = new_mails(3)
    rig.send(queued)
    with publisher_for(rig, tmp_path) as publisher:
        roomy = publisher.sample("roomy")
        spool = rig.postfix.queue_dir
        st = os.statvfs(spool)
        assert roomy["QueueFreePercent"] == pytest.approx(100 * st.f_bavail / st.f_blocks, abs=1)
        # Below 100: the queue, and the chroot's copies of resolv.conf & co. Debian keeps there.
        assert 50 < roomy["QueueFreePercent"] < 100

        filler = spool / "filler"
        filler.write_bytes(b"\0" * (free_bytes(spool) - LEFT_FREE))
        full = publisher.sample("full")
        assert full["QueueFreePercent"] == pytest.approx(100 * LEFT_FREE / SPOOL_BYTES, abs=1)
        assert full["DeferredMessages"] == len(queued)

    [refused] = rig.submit([new_mail()])
    assert (refused.code, refused.text) == (452, "4.3.1 Insufficient system storage"), refused
    assert "NOQUEUE: reject: MAIL from" in rig.postfix.log()  # at MAIL FROM: nothing was written

    filler.unlink()
    rig.standin.up()
    later = new_mails(1)
    rig.send(later)  # accepted again
    rig.postfix.flush()
    rig.delivered_once([*queued, *later])
