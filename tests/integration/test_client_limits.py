"""Per-client limits on real Postfix (layout: ``simworld/netns_rig.py``): one allowed client
over its limit is told to retry later (4xx) while another allowed client is served, although
both are in mynetworks, which Postfix exempts from its limits by default."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from simworld.netns_rig import (
    CLIENT_INSIDE,
    CLIENT_INSIDE_OTHER,
    MakeRig,
    Rig,
    new_mails,
    relay_settings,
    run,
)

pytestmark = pytest.mark.integration

LIMIT = 4

# Holds ``count`` connections from ``source`` open at once and prints each one's greeting code.
_HOLD_CONNECTIONS = """
import json, socket, sys
server, source, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
held, codes = [], []
for _ in range(count):
    sock = socket.create_connection((server, 25), timeout=30, source_address=(source, 0))
    held.append(sock)
    codes.append(int(sock.recv(512)[:3]))
json.dump(codes, sys.stdout)
"""


def greetings(rig: Rig, source: str, count: int) -> list[int]:
    """The greeting codes of ``count`` connections from ``source``, all open at once."""
    command = rig.network.exec(
        rig.network.relay, sys.executable, "-c", _HOLD_CONNECTIONS, rig.network.relay_ip
    )
    codes: list[int] = json.loads(run(*command, source, str(count)).stdout)
    return codes


# Postfix's default exceptions ($mynetworks) exempt every allowed client: the limits do nothing.
WITHOUT_EXCEPTIONS_RENDERED: dict[str, Any] = {"smtpd_client_event_limit_exceptions": None}


@pytest.mark.parametrize(
    ("limit", "stage", "refusal"),
    [
        ({"client_message_rate_limit": LIMIT}, "mail", "too much mail"),
        ({"client_recipient_rate_limit": LIMIT}, "rcpt", "too many recipients"),
    ],
)
def test_a_flooding_client_is_told_to_retry_while_another_is_served(
    make_rig: MakeRig, limit: dict[str, int], stage: str, refusal: str
) -> None:
    rig = make_rig(relay_settings(**limit))
    flood = new_mails(LIMIT + 3)
    replies = rig.submit(flood, source=CLIENT_INSIDE)

    served = [mail for mail, reply in zip(flood, replies, strict=True) if reply.accepted]
    throttled = [reply for reply in replies if not reply.accepted]
    assert len(served) == LIMIT, replies
    assert all(r.stage == stage and r.code == 450 and refusal in r.text for r in throttled), (
        throttled
    )
    other = new_mails(3)
    assert all(reply.accepted for reply in rig.submit(other, source=CLIENT_INSIDE_OTHER))
    rig.delivered_once([*served, *other])
    print(f"throttled reply: {throttled[0].code} {throttled[0].text}")


def test_the_limits_bind_allowed_clients_only_because_mynetworks_is_not_exempt(
    make_rig: MakeRig,
) -> None:
    """The control: with Postfix's default exceptions the same flood all passes."""
    rig = make_rig(
        relay_settings(client_message_rate_limit=LIMIT), main_cf=WITHOUT_EXCEPTIONS_RENDERED
    )
    replies = rig.submit(new_mails(LIMIT + 3), source=CLIENT_INSIDE)
    assert all(reply.accepted for reply in replies)


def test_a_client_over_its_connection_limit_gets_421_while_another_connects(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(relay_settings(client_connection_limit=2))
    assert greetings(rig, CLIENT_INSIDE, 3) == [220, 220, 421]
    assert greetings(rig, CLIENT_INSIDE_OTHER, 2) == [220, 220]
