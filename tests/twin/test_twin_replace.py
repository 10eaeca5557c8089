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
from simworld.twin.session import Prober, TwinBoot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="twins need root (namespaces, nspawn)"),
]
MESSAGES: Final = tuple(f"<replaced-{n}@twin.test>" for n in range(6))
SETUP_LOG: Final = "/var/log/cloud-init-output.log"
WAITING: Final = f"cmc-relay-queue-volume: waiting for the queue volume {QUEUE_DEVICE}"
FORMATTING: Final = "cmc-relay-queue-volume: formatting the new queue volume"
MOUNTED: Final = f"queue on {QUEUE_DEVICE} ({QUEUE_LABEL}), mounted on /var/spool/postfix"
SECRET_FILES: Final = {"/etc/postfix/relay_password", "/etc/postfix/relay_password.db"}


@dataclass
class Stack:
    """The stack's twin (A, then B), its queue volume and the probes running against it."""

    boot: TwinBoot
    volume: Volume
    started: float = field(default_factory=time.monotonic)
    probers: list[Prober] = field(default_factory=list)


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
            for prober in stack.probers:
                teardown.callback(prober.kill)


def setup_log(boot: TwinBoot) -> str:
    return boot.run("cat", SETUP_LOG).stdout


def attach_when_asked(boot: TwinBoot, volume: Volume, timeout: float = 600) -> float:
    """Once the instance's setup waits for its queue volume, attach it; returns when the
    setup began to wait (epoch seconds, as near as a poll each second tells)."""

    def asking() -> bool:
        if boot.run("test", "-e", "/run/cloud-init/result.json").returncode == 0:
            raise AssertionError(f"cloud-init ended without waiting for the volume:\n{tail(boot)}")
        return WAITING in setup_log(boot)

    wait_until(asking, timeout, "the setup waiting for the queue volume", interval=1)
    asked = time.time()
    boot.attach_volume(volume.attach())
    return asked


def tail(boot: TwinBoot) -> str:
    return "\n".join(setup_log(boot).splitlines()[-20:])


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


def first_answered(outcomes: list[list[Any]], since: float) -> float | None:
    """The start of the first session from ``since`` on that the server answered."""
    return next((at for at, ok in outcomes if ok and at >= since), None)


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
    old_address, old_instance = boot.address, boot.instance_id
    assert world.resolve(name) == [old_address]

    # The service defers: the mail waits in A's queue, on the volume.
    world.standin.reconfigure(data_451_messages=100_000)
    bodies = {message_id: body_of(message_id) for message_id in MESSAGES}
    for message_id, body in bodies.items():
        assert boot.submit(net.CLIENT_IP, message_id, body).accepted
    queued = boot.queued_message_ids
    wait_until(lambda: set(MESSAGES) <= queued(), 60, "the messages queued on A", interval=1)

    # The replacement, probed from the application network at both addresses.
    new_address = net.INSTANCE_IPS[boot.instance + 1]
    for address in (old_address, new_address):
        stack.probers.append(Prober(boot, tmp_path, address, interval=0.25, max_seconds=900))
    time.sleep(2)  # sessions before the stop too
    stop_started = time.time()
    clean = boot.stop()
    stopped = time.time()
    assert clean, "A did not power off by itself"
    # Nothing holds the device once A's mount namespace is gone (as EC2 detaches a volume
    # only once the instance has stopped).
    wait_until(lambda: not volume.in_use(), 10, "the volume released by A", interval=0.2)
    volume.detach()
    detached = time.time()
    boot.next_instance()
    boot.prepare()
    new_started = time.time()
    boot.start()
    asked = attach_when_asked(boot, volume)
    attached = time.time()
    boot.boot()
    booted = time.time()
    time.sleep(2)
    old_probe, new_probe = (prober.stop() for prober in stack.probers)

    # Twin B: a new instance of the same stack, with A's mail on A's volume.
    assert boot.instance_id != old_instance and boot.address == new_address
    booted_clean(boot)
    log = setup_log(boot)
    assert WAITING in log and MOUNTED in log
    assert FORMATTING not in log, "B formatted the volume it was given"
    assert queue_source(boot) == QUEUE_DEVICE
    assert set(MESSAGES) <= boot.queued_message_ids()
    report = verified(boot)
    world.point(name, boot.address)  # the record follows the verified replacement
    wait_until(lambda: world.resolve(name) == [new_address], 10, f"{name} resolving to B")

    # The service returns: each message once, as it was submitted.
    world.standin.reconfigure(data_451_messages=0)
    for message_id in MESSAGES:
        boot.wait_for_message(message_id, timeout=120)
    time.sleep(12)  # a duplicate would come with the next retry (backoff 5-10 s)
    delivered = {m: [r.body_sha256 for r in boot.messages(m)] for m in MESSAGES}
    received = {m: [r.data for r in boot.messages(m)] for m in MESSAGES}
    assert delivered == {m: [sha256_as_received(b)] for m, b in bodies.items()}, received
    assert not set(MESSAGES) & boot.queued_message_ids()
    assert set(boot.secret_places()) <= SECRET_FILES

    serving = first_answered(new_probe["outcomes"], attached)
    assert serving is not None, f"B never answered a client after the attach: {new_probe}"
    figures = {
        "refused_window_s": round(serving - stop_started, 1),
        "a_stop_s": round(stopped - stop_started, 1),
        "detach_s": round(detached - stopped, 1),
        "b_boot_to_setup_waiting_s": round(asked - new_started, 1),
        "attach_to_serving_s": round(serving - attached, 1),
        "ec2_order_window_s": round(detached - stop_started + serving - attached, 1),
        "b_boot_to_serving_s": round(serving - new_started, 1),
        "b_boot_to_booted_s": round(booted - new_started, 1),
        "a_answered_after_stop_began": sum(
            1 for at, ok in old_probe["outcomes"] if ok and at >= stop_started
        ),
        "a_refused_sessions": old_probe["refused"],
        "b_answered_before_volume": sum(1 for at, ok in new_probe["outcomes"] if ok and at < asked),
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
        f"; every message delivered once; {name} -> {new_address}\n"
        f"figures: {json.dumps(figures)} ({tmp_path / 'replacement.json'})"
    )
