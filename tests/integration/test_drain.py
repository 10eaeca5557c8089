"""The drain before a host is deleted (``userdata/scripts/cmc-relay-drain``), run as the host's
own command on the rig's real Postfix, against the stand-in taken down and up again.

Nothing may be lost: mail queued while the service is away is delivered exactly once when it
comes back, port 25 refuses new mail from the moment the drain starts, and a drain that runs
out of time says how much is left and leaves it queued.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Final

import pytest

from simworld.netns_rig import RELAY_IP, REPO, Rig, new_mails, wait_until

pytestmark = pytest.mark.integration

DRAIN: Final = REPO / "userdata" / "scripts" / "cmc-relay-drain"
REFUSED: Final = 3
# Connect to port 25 from inside the relay's namespace: exit 3 if refused, 0 if accepted.
PROBE: Final = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 25), timeout=5).close()
except ConnectionRefusedError:
    sys.exit(3)
"""


def port_25_refuses(rig: Rig) -> bool:
    probe = rig.network.exec(rig.network.relay, sys.executable, "-c", PROBE, RELAY_IP)
    return subprocess.run(probe, capture_output=True, check=False).returncode == REFUSED


def drain_command(rig: Rig, timeout: float) -> list[str]:
    """The script as the host runs it (its own shebang), on the rig's Postfix."""
    return rig.network.exec(
        rig.network.relay, DRAIN, "--postfix-config-dir", rig.postfix.config_dir,
        "--timeout", str(timeout), "--interval", "0.5",
    )  # fmt: skip


def run_drain(rig: Rig, timeout: float) -> subprocess.CompletedProcess[str]:
    command = drain_command(rig, timeout)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_drain_refuses_new_mail_and_delivers_the_queue_exactly_once(rig: Rig) -> None:
    mails = new_mails(5)
    rig.queue_deferred(mails)
    assert not port_25_refuses(rig)

    drain = subprocess.Popen(
        drain_command(rig, timeout=120), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: port_25_refuses(rig), 15, "port 25 refusing connections")
        assert drain.poll() is None, "the drain ended while the service was still down"
        assert not rig.standin.messages()
        rig.standin.up()
        out, err = drain.communicate(timeout=90)
    finally:
        drain.kill()
        drain.wait()

    assert drain.returncode == 0, err
    assert out.splitlines()[0].startswith("port 25 closed; delivering ")
    assert out.splitlines()[-1].startswith("drained: the queue is empty after ")
    rig.delivered_once(mails, timeout=10)  # already empty: nothing left to retry or duplicate
    assert port_25_refuses(rig)  # the host is on its way out


def test_drain_out_of_time_names_what_remains_and_keeps_it(rig: Rig) -> None:
    mails = new_mails(3)
    rig.queue_deferred(mails)

    done = run_drain(rig, timeout=3)

    assert done.returncode == 1
    report = done.stderr.strip()
    assert report.startswith("not drained: 3 messages ("), report  # (deferred: 3), or one active
    assert report.endswith(") remain in the queue after 3 s; port 25 stays closed"), report
    assert port_25_refuses(rig)
    rig.standin.up()
    rig.delivered_once(mails, timeout=60)  # kept in the queue, and delivered once back


def test_drain_starts_a_stopped_postfix_to_deliver_what_it_holds(rig: Rig) -> None:
    """Mail queued by a Postfix that has since stopped is delivered, still without port 25."""
    mails = new_mails(2)
    rig.queue_deferred(mails)
    rig.postfix.stop()
    rig.standin.up()

    done = run_drain(rig, timeout=60)

    assert done.returncode == 0, done.stderr
    assert port_25_refuses(rig)
    rig.delivered_once(mails, timeout=10)
