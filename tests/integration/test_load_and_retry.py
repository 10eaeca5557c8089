"""Concurrency towards the service (G9) and retries while it is busy or away (G10).

The only timing assertions are what G10's settings guarantee, not measured figures: a
deferred message is due again at most maximal_backoff_time (10 s) after an attempt, and the
queue manager looks at the deferred queue every queue_run_delay (5 s), so each retry starts at
most their sum after the attempt before it (``benchmarks.bounds.recovery_bound``, plus
Postfix's one-second resolution of queue file times). How long three failures take in all
depends on where the queue scans fall (19 to 24 s measured), so it is printed, not asserted.
"""

from __future__ import annotations

import itertools
import time

import pytest

from benchmarks.bounds import recovery_bound
from benchmarks.scenarios import effective
from simworld.netns_rig import (
    RELAY_IP,
    SERVICE_IPS,
    MakeRig,
    Rig,
    new_mail,
    new_mails,
    relay_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

# From the service's return to the last of an outage's 50 messages: the retry bound (15 s)
# and 5 s to deliver them over 10 sessions.
RETRY_BOUND_S = 20
TIMER_RESOLUTION_S = 1  # Postfix schedules a retry by a queue file's mtime, in whole seconds
OUTAGE_S = 30


def event_time(rig: Rig, kind: str) -> float:
    return next(e["t"] for e in rig.standin.events() if e["event"] == kind)


def retry_bound(rig: Rig) -> int:
    """The most seconds between an attempt and the next, from the rig's effective settings."""
    maximal_backoff, queue_run_delay = (
        effective(rig, name) for name in ("maximal_backoff_time", "queue_run_delay")
    )
    return recovery_bound(maximal_backoff, queue_run_delay) + TIMER_RESOLUTION_S


def test_burst_stays_within_max_connections(make_rig: MakeRig) -> None:
    """G9, 200 messages at once to a service that allows maxConnections sessions: the relay
    never holds more than that many connections (counted on the wire) nor sessions (counted by
    the service, which counts a session until it has processed the client's FIN); the service
    refuses no session; each message arrives exactly once.

    One connection per message would overshoot the service's count by its close lag and get
    some sessions refused: the rendered settings keep the connections open and reuse them."""
    settings = relay_settings()
    limit = settings.max_connections
    rig = make_rig(settings, standin={"receive_interval_ms": 100, "max_sessions_per_ip": limit})
    mails = new_mails(200)
    with rig.wire_tap() as wire:
        rig.send(mails)
        rig.delivered_once(mails, timeout=120)

    stats = rig.standin.stats()
    print(
        f"max_connections={limit}: on the wire {wire.peak_open} open at most, "
        f"{wire.connections} connections; at the service "
        f"{stats.peak_deliveries_by_ip[RELAY_IP]} deliveries in progress at most, "
        f"{stats.peak_sessions_by_ip[RELAY_IP]} sessions open at most"
    )
    assert stats.refused_sessions == 0, stats.refused_by_reason
    assert wire.peak_open <= limit
    assert stats.peak_sessions_by_ip[RELAY_IP] <= limit
    assert stats.peak_deliveries_by_ip[RELAY_IP] <= limit
    assert wire.connections <= limit, "connections are reused, not one per message"


@pytest.mark.parametrize("addresses", [1, 3], ids=["one-address", "round-robin"])
def test_three_temporary_failures_each_retried_within_the_bound(
    make_rig: MakeRig, addresses: int
) -> None:
    """451 at end of DATA three times, then success. With one address each failure is a
    delivery attempt of its own, so every retry waits for G10's timers; with the round robin
    Postfix tries a second address within the same attempt (smtp_mx_session_limit = 2)."""
    rig = make_rig(standin={"data_451_messages": 3}, dns_addresses=SERVICE_IPS[:addresses])
    mail = new_mail()
    rig.send([mail])
    [record] = rig.delivered_once([mail], timeout=60)

    events = rig.standin.events()
    outcomes = [e["outcome"] for e in events if e["event"] == "delivery_end"]
    assert outcomes == ["451", "451", "451", "accepted"]
    starts = [e["t"] for e in events if e["event"] == "delivery_start"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    print(f"retried after {[round(gap, 1) for gap in gaps]} s; delivered "
          f"{record.accepted_at - starts[0]:.1f} s after the first attempt")  # fmt: skip
    bound = retry_bound(rig)
    assert bound == 16  # G10's 10 s of maximal backoff and 5 s between queue scans, plus 1 s
    assert max(gaps) <= bound, f"a retry came {max(gaps):.1f} s after the attempt before it"


@pytest.mark.parametrize("restart", [False, True], ids=["postfix-running", "postfix-restarted"])
def test_outage_loses_and_duplicates_nothing(rig: Rig, restart: bool) -> None:
    """The service is down for 30 s while 50 messages come in (optionally Postfix restarts
    with half of them queued); once it is back all 50 arrive exactly once, within G10's bound."""
    rig.standin.down()
    down_at = time.monotonic()
    mails = new_mails(50)
    rig.send(mails[:25])
    if restart:
        wait_until(lambda: len(rig.postfix.queue()) == 25, 30, "25 messages queued")
        rig.postfix.restart()
    rig.send(mails[25:])
    wait_until(
        lambda: rig.postfix.queued("deferred") == 50,
        OUTAGE_S,
        "all 50 deferred",
    )
    time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
    assert not rig.standin.messages()
    rig.standin.up()

    records = rig.delivered_once(mails, timeout=OUTAGE_S + 30)
    last = max(r.accepted_at for r in records) - event_time(rig, "up")
    print(f"all 50 delivered {last:.1f} s after the service was up")
    assert last <= RETRY_BOUND_S, f"last message delivered {last:.1f} s after the service was up"
    assert "status=bounced" not in rig.postfix.log()
