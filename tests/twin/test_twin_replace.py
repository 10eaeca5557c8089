"""A single relay host replaced without losing its queue (Debian 13 twins), as the README's
"Replacing a host without loss" says it happens on EC2: the queue on a volume of its own that
moves from the old instance to the new one of the same stack.

Twin A boots with the bundle the component renders (``queue_device=QUEUE_DEVICE``): a sparse
image file on a loop device is its queue volume, which the shipped ``cmc-relay-queue-volume``
formats and mounts at first boot. The service defers (the stand-in answers 451), and six
messages with distinct Message-IDs and bodies wait in A's queue. Then the replacement: A is
stopped cleanly (EC2's stop: systemd powers off, Postfix stops, the file system is unmounted),
the volume is detached (its loop device freed, once nothing holds it), twin B of the same stack
(same user data, payload and pointer; a new instance id, MAC and address) boots, its setup
waits for the volume and gets it, and the stack's record for ``hostName`` in the VPC resolver
moves to B once B is verified. The service returns: every message arrives exactly once, with
its body, and the name resolves to B.

Measured and printed, not asserted (also in ``replacement.json`` in the test's tmp dir): the
window in which clients are refused (from A's stop starting to the first session B's Postfix
answers after it got the volume, seen by probes of both addresses from the application
network), its parts, and B's boot to serving.

How this differs from EC2, besides the twin's own deviations (session.DEVIATIONS):

- Order: the twin's world has one NIC for the stack's instances, so B is created after A has
  stopped. On EC2 (the README's steps 1-4) B is created first and is already waiting for the
  volume when A stops, so the refused window there is A's stop, the detach, the attach and B's
  mount and start; here it also holds B's whole boot up to its setup's wait. Both are reported:
  ``refused_window_s`` as seen, ``ec2_order_window_s`` = A's stop + detach + attach to serving.
- The attach: B's setup waits for the device as on EC2, and the test attaches the volume while
  it waits (a loop device set up on this machine and a device node made in the twin's /dev:
  no udev runs in the container, so no NVMe or by-label links; the name is the one the payload
  gives, /dev/sdf). The detach is the loop device freed after A's power-off, checked first to
  be held by nothing (the kernel refuses an exclusive open of a mounted block device).
- The record: a hosts file of the VPC resolver (dnsmasq, TTL 0) that the test rewrites when B
  is verified, as the component moves its Route 53 record (TTL 60 s) to a verified replacement.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from cmc_relay.userdata.render import QUEUE_DEVICE
from simworld.netns_rig import wait_until
from simworld.queue_volume import QUEUE_LABEL, Volume
from simworld.twin import world as net
from simworld.twin.scenario import WAITING, attach_when_asked, replace_host, setup_log, tail
from simworld.twin.session import TwinBoot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="twins need root (namespaces, nspawn)"),
]
MESSAGES: Final = tuple(f"<replaced-{n}@twin.test>" for n in range(6))
# Mail on B's root disk while its setup waits for the volume: sendmail's, which postdrop puts in
# maildrop with Postfix stopped; the volume's script carries it onto the volume.
DROPPED: Final = "<dropped-on-b@twin.test>"
CARRIED: Final = "cmc-relay-queue-volume: carried 1 messages from the root disk's spool"
FORMATTING: Final = "cmc-relay-queue-volume: formatting the new queue volume"
MOUNTED: Final = f"queue on {QUEUE_DEVICE} ({QUEUE_LABEL}), mounted on /var/spool/postfix"
SECRET_FILES: Final = {"/etc/postfix/relay_password", "/etc/postfix/relay_password.db"}


@dataclass
class Stack:
    """The stack's twin (A, then B) and its queue volume."""

    boot: TwinBoot
    volume: Volume
    started: float = field(default_factory=time.monotonic)


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    boot = TwinBoot("debian-13", secrets.token_urlsafe(18), queue_device=QUEUE_DEVICE)
    volume = Volume(tmp_path_factory.mktemp("queue-volume") / "queue.img", size_mb=128)
    stack = Stack(boot, volume)
    try:
        boot.build()
        boot.start_world()
        boot.render()
        yield stack
    finally:
        with contextlib.ExitStack() as teardown:
            teardown.callback(volume.remove)  # last: once no twin holds it
            teardown.callback(boot.close, keep=tmp_path_factory.mktemp("twin-replace"))


def queue_source(boot: TwinBoot) -> str:
    found = boot.run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", "/var/spool/postfix")
    return found.stdout.strip()


def verified(boot: TwinBoot) -> dict[str, Any]:
    """The verifier's report, which must pass, its queue-volume check included."""
    code, report = boot.verify()
    assert code == 0, report
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["queue-volume"]["ok"], checks["queue-volume"]
    return report


def booted_clean(boot: TwinBoot) -> None:
    assert boot.cloud_init_status()["status"] == "done", tail(boot)
    assert boot.failed_units() == []


def body_of(message_id: str) -> str:
    """A body of its own, in lines short enough to go as they are (7bit, no re-encoding)."""
    return f"Queued on the old host:\n{message_id} {secrets.token_hex(8)}\n"


def sha256_as_received(body: str) -> str:
    """The stand-in's body hash: the bytes after the headers, with SMTP's CRLF line ends."""
    return hashlib.sha256(body.replace("\n", "\r\n").encode()).hexdigest()


def test_a_replaced_host_hands_its_queue_to_the_next_and_every_message_arrives_once(
    stack: Stack, tmp_path: Path
) -> None:
    boot, volume = stack.boot, stack.volume
    world = boot.world
    assert world is not None and world.standin is not None
    name = boot.settings.host_name

    # Twin A: the stack's first host, its record in the VPC resolver, the volume attached
    # while its setup waits, formatted and mounted by the shipped script.
    boot.prepare()
    world.point(name, boot.address)
    boot.start()
    attach_when_asked(boot, volume)
    boot.boot()
    booted_clean(boot)
    assert FORMATTING in setup_log(boot)
    assert queue_source(boot) == QUEUE_DEVICE
    verified(boot)
    assert world.resolve(name) == [boot.address]

    # The service defers: the mail waits in A's queue, on the volume.
    world.standin.reconfigure(data_451_messages=100_000)
    bodies = {message_id: body_of(message_id) for message_id in MESSAGES}
    for message_id, body in bodies.items():
        assert boot.submit(net.CLIENT_IP, message_id, body).accepted
    queued = boot.queued_message_ids
    wait_until(lambda: set(MESSAGES) <= queued(), 60, "the messages queued on A", interval=1)

    # The replacement, probed from the application network at both addresses.
    new_address = net.INSTANCE_IPS[boot.instance + 1]
    dropped = f"Subject: on the root disk\nMessage-ID: {DROPPED}\n\nwritten while B waits\n"

    def drop_on_root_disk() -> None:
        boot.run("/usr/sbin/sendmail", "-i", "someone@example.com", input=dropped, check=True)

    replaced = replace_host(boot, volume, tmp_path, meanwhile=drop_on_root_disk)
    assert replaced.clean_stop, "A did not power off by itself"

    # Twin B: a new instance of the same stack, with A's mail on A's volume.
    assert boot.instance_id != replaced.old_instance and boot.address == new_address
    booted_clean(boot)
    log = setup_log(boot)
    assert f"{WAITING} {QUEUE_DEVICE}" in log and MOUNTED in log and CARRIED in log
    assert FORMATTING not in log, "B formatted the volume it was given"
    assert queue_source(boot) == QUEUE_DEVICE
    assert {*MESSAGES, DROPPED} <= boot.queued_message_ids()
    report = verified(boot)
    world.point(name, boot.address)  # the record follows the verified replacement
    wait_until(lambda: world.resolve(name) == [new_address], 10, f"{name} resolving to B")

    # The service returns: each message once, as it was submitted.
    world.standin.reconfigure(data_451_messages=0)
    for message_id in (*MESSAGES, DROPPED):
        boot.wait_for_message(message_id, timeout=120)
    time.sleep(12)  # a duplicate would come with the next retry (backoff 5-10 s)
    delivered = {m: [r.body_sha256 for r in boot.messages(m)] for m in MESSAGES}
    received = {m: [r.data for r in boot.messages(m)] for m in MESSAGES}
    assert delivered == {m: [sha256_as_received(b)] for m, b in bodies.items()}, received
    assert len(boot.messages(DROPPED)) == 1
    assert not {*MESSAGES, DROPPED} & boot.queued_message_ids()
    assert set(boot.secret_places()) <= SECRET_FILES

    assert replaced.serving() is not None, f"B never answered a client: {replaced.new_probe}"
    old_probe, new_probe = replaced.old_probe, replaced.new_probe
    figures: dict[str, float] = {
        **replaced.figures(),
        "a_answered_after_stop_began": sum(
            1 for at, ok in old_probe["outcomes"] if ok and at >= replaced.stop_started
        ),
        "a_refused_sessions": old_probe["refused"],
        "b_answered_before_volume": sum(
            1 for at, ok in new_probe["outcomes"] if ok and at < replaced.asked
        ),
        "b_refused_sessions": new_probe["refused"],
        "b_verifier_checks_passed": sum(check["ok"] for check in report["checks"]),
        "messages": len(MESSAGES),
        "test_s": round(time.monotonic() - stack.started, 1),
    }
    (tmp_path / "replacement.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"\nreplacement of a single host ({len(MESSAGES)} deferred messages on its volume): "
        f"clients refused for {figures['refused_window_s']}s (A's stop "
        f"{figures['a_stop_s']}s, detach {figures['detach_s']}s, B's boot to its setup "
        f"waiting for the volume {figures['b_boot_to_setup_waiting_s']}s, attach to B "
        f"serving {figures['attach_to_serving_s']}s); in EC2's order (B booted first) "
        f"{figures['ec2_order_window_s']}s; B boot to serving {figures['b_boot_to_serving_s']}s"
        f"; every message delivered once, and the one dropped on B's root disk while it waited"
        f"; {name} -> {new_address}\n"
        f"figures: {json.dumps(figures)} ({tmp_path / 'replacement.json'})"
    )
