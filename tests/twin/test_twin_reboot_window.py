"""The maintenance window (``rebootWindow``) on the real systemd of a Debian 13 twin: the
payload's ``cmc-relay-reboot.timer`` fires by itself at the window, and
``cmc-relay-reboot`` reads the host's index (0) from the metadata service's instance tags,
then reboots the host only if ``/run/reboot-required`` exists, saying why either way.

The twin boots without a window; ``rebootWindow`` is then set, and moved, to the twin's next
minute as ``pulumi up`` brings it to a running host: the instance's index tag and metadata
tags turned on (in place; here the metadata service restarted with them) and a new bundle
applied in place (``cmc-relay-apply``), which must enable a timer the host did not have and
re-arm one it has. How the twin
differs from EC2 here (besides ``DEVIATIONS``): the twin's clock is this machine's; the
reboot the host asks for ends ``systemd-nspawn`` (exit 133), and the test starts it again
on the same root where EC2 restarts the instance (``Machine.rebooted``); the update is only
its flag, written by hand (no package is upgraded). The stagger (host i waits i x 30
minutes, a constant of the rendered unit) is left to ``tests/test_os_updates.py``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from simworld.netns_rig import wait_until
from simworld.twin import world as net
from simworld.twin.scenario import REBOOT_FLAG, apply_change, boot_id
from simworld.twin.session import TwinBoot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="twins need root (namespaces, nspawn)")
TIMER = "cmc-relay-reboot.timer"
# From the window's change to its start: the apply takes seconds (target 30).
LEAD = timedelta(seconds=45)
# systemd fires a calendar timer within AccuracySec (1 min by default) of its time.
FIRES_WITHIN = LEAD + timedelta(minutes=2, seconds=15)
PACKAGES = ("linux-image-6.12.0-1-cloud-amd64", "libc6")
BACKLOG = tuple(f"<window-backlog-{i}@twin.test>" for i in range(3))


def window_after(now: datetime, lead: timedelta = LEAD) -> tuple[str, datetime]:
    """A daily ``rebootWindow`` at the first whole minute at least ``lead`` after ``now``
    (UTC, the hosts' clock), and its start: the next day's after 23:59."""
    start = (now + lead).replace(second=0, microsecond=0)
    if start < now + lead:
        start += timedelta(minutes=1)
    return f"daily {start:%H:%M}", start


def test_a_window_starts_at_the_first_whole_minute_after_the_lead() -> None:
    at = datetime(2026, 12, 7, 16, 59, 10, tzinfo=UTC)
    assert window_after(at) == ("daily 17:00", datetime(2026, 12, 7, 17, 0, tzinfo=UTC))
    late = datetime(2026, 12, 7, 23, 59, 20, tzinfo=UTC)  # 45 s later is the next day
    assert window_after(late) == ("daily 00:01", datetime(2026, 12, 8, 0, 1, tzinfo=UTC))
    exact = datetime(2026, 12, 7, 9, 29, 15, tzinfo=UTC)
    assert window_after(exact)[0] == "daily 09:30"


def move_window(boot: TwinBoot) -> datetime:
    """rebootWindow set (or moved) to the next minute (LEAD ahead) as ``pulumi up`` brings
    it: the instance's tags in its metadata, the bundle applied in place; its start."""
    assert boot.world is not None
    window, start = window_after(datetime.now(UTC))
    changed = dataclasses.replace(boot.settings, reboot_window=window)
    if boot.settings.reboot_window is None:
        boot.settings = changed  # imds_facts: the index tag, as the component sets it
        boot.world.start_imds(boot.imds_facts())
    applied = apply_change(boot, changed).result
    assert applied.returncode == 0, applied.stdout + applied.stderr
    boot.settings = changed
    # The timer re-armed for today's (or, after 23:59, tomorrow's) window, not a later day.
    next_elapse = boot.run("systemctl", "show", "-P", "NextElapseUSecRealtime", TIMER).stdout
    assert f"{start:%Y-%m-%d %H:%M}:00" in next_elapse, (window, next_elapse)
    ahead = (start - datetime.now(UTC)).total_seconds()
    print(f"rebootWindow {window!r} applied {ahead:.0f}s before it")
    return start


def reboot_journal(boot: TwinBoot, since: datetime, *which: str) -> list[tuple[float, str]]:
    """cmc-relay-reboot's lines from ``since`` on (``which``: journalctl's boot option):
    epoch seconds, text."""
    since_option = f"--since=@{int(since.timestamp())}"
    out = boot.journal("-u", "cmc-relay-reboot.service", "-o", "short-unix", since_option, *which)
    lines = [line.split(" ", 1) for line in out.splitlines() if "cmc-relay-reboot[" in line]
    # "HOST cmc-relay-reboot[PID]: cmc-relay-reboot: what it said"
    return [(float(at), text.split(": ", 2)[2]) for at, text in lines]


@pytest.mark.integration
@needs_root
def test_without_a_required_reboot_the_window_passes_and_says_so(booted: TwinBoot) -> None:
    boot = booted
    assert boot.run("test", "-e", REBOOT_FLAG).returncode != 0
    machine = boot_id(boot)
    start = move_window(boot)

    def said() -> list[tuple[float, str]] | None:
        lines = reboot_journal(boot, start)
        return lines if any(text == "no reboot required" for _, text in lines) else None

    lines = wait_until(said, FIRES_WITHIN.total_seconds(), "the window's run", interval=2)
    print(f"fired {lines[0][0] - start.timestamp():.1f}s into the window: {lines}")
    assert [text for _, text in lines] == [
        "host 0: my turn is 0 minutes into the window",
        "no reboot required",
    ]
    assert boot.run("systemctl", "show", "-P", "Result", "cmc-relay-reboot.service").stdout == (
        "success\n"
    )
    assert boot_id(boot) == machine  # the same boot: no reboot


@pytest.mark.integration
@needs_root
def test_a_required_reboot_happens_in_the_window_and_keeps_the_queue(booted: TwinBoot) -> None:
    """An update asked for a reboot; mail the service defers waits in the queue. The timer
    reboots the host by itself; it serves again, the flag is gone, the mail is delivered once."""
    boot = booted
    assert boot.world is not None and boot.world.standin is not None
    boot.world.standin.reconfigure(data_451_messages=100_000)  # every message deferred
    for message_id in BACKLOG:
        assert boot.submit(net.CLIENT_IP, message_id).accepted
    queued = boot.queued_message_ids
    wait_until(lambda: set(BACKLOG) <= queued(), 60, "the backlog queued", interval=1)
    # As an update of the kernel or libc leaves them (update-notifier-common's hook).
    boot.run("sh", "-c", f"echo '*** System restart required ***' > {REBOOT_FLAG}", check=True)
    boot.run("tee", f"{REBOOT_FLAG}.pkgs", input="".join(f"{p}\n" for p in PACKAGES), check=True)
    machine = boot_id(boot)
    start = move_window(boot)

    state = boot.rebooted(within=FIRES_WITHIN.total_seconds())  # the test never asks for it
    booted_at = time.time()
    served = boot.submit(net.CLIENT_IP, "<window-after@twin.test>")
    serving_at = time.time()
    lines = reboot_journal(boot, start, "-b", "-1")
    print(
        f"fired {lines[0][0] - start.timestamp():.1f}s into the window; booted again "
        f"{booted_at - start.timestamp():.1f}s, serving {serving_at - start.timestamp():.1f}s "
        f"into it (systemd {state}); {lines}"
    )
    assert boot_id(boot) != machine
    assert [text for _, text in lines] == [
        "host 0: my turn is 0 minutes into the window",
        f"rebooting: {REBOOT_FLAG} exists (packages: {' '.join(PACKAGES)})",
    ]
    assert state == "running", boot.failed_units()
    assert served.accepted, served
    assert boot.run("test", "-e", REBOOT_FLAG).returncode != 0  # /run is new at every boot
    assert set(BACKLOG) <= boot.queued_message_ids()
    code, report = boot.verify()
    assert code == 0, report
    boot.world.standin.reconfigure(data_451_messages=0)
    for message_id in (*BACKLOG, "<window-after@twin.test>"):
        boot.wait_for_message(message_id, timeout=120)
    time.sleep(12)  # a duplicate would come with the next retry (backoff 5-10 s)
    assert {m: len(boot.messages(m)) for m in BACKLOG} == dict.fromkeys(BACKLOG, 1)
