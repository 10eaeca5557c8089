"""G13/G14: the SMTP host is resolved through the local dnsmasq cache, round robin intact."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from simworld.netns_rig import SERVICE_IPS, MakeRig, Rig, new_mails

pytestmark = pytest.mark.integration

TTL = 3  # seconds, short enough to see the cache expire within the test


def upstream_queries(rig: Rig) -> Counter[str]:
    """Queries for the SMTP host that reached the upstream resolver, by record type."""
    lines = rig.upstream.queries("auth", rig.settings.relay_host)
    return Counter(line.split("auth[", 1)[1].split("]", 1)[0] for line in lines)


def test_smtp_host_resolved_through_the_cache(make_rig: MakeRig) -> None:
    rig = make_rig(
        dns_ttl=TTL,
        # A session per message, each to an address Postfix picks at random from the answer
        # (smtp_randomize_addresses): 40 sessions leave one address unused with odds of 3e-7,
        # where a few reused sessions did so now and then. The session cap is not under test.
        main_cf={
            "smtp_connection_cache_destinations": None,
            "smtp_connection_cache_on_demand": "no",
        },
        standin={"max_sessions_per_ip": 40},
    )
    host = rig.settings.relay_host
    mails = new_mails(40)
    started = time.monotonic()
    rig.send(mails)
    rig.delivered_once(mails)
    windows = 1 + int((time.monotonic() - started) // TTL)

    # Every delivery looked the host up at the cache (127.0.0.1 comes first in resolv.conf)…
    assert len(rig.cache.queries("query", host)) >= len(mails)
    # …and the upstream was asked at most once per TTL, for each record type.
    upstream = upstream_queries(rig)
    assert 1 <= upstream["A"] <= windows, upstream
    assert all(n <= windows for n in upstream.values()), upstream
    # All round-robin addresses survive the cache and get used.
    assert rig.cache.cached_answers(host) == {*SERVICE_IPS, "NODATA-IPv6"}
    relays = {d.relay for d in rig.postfix.deliveries()}
    assert relays == {f"{host}[{ip}]:10025" for ip in SERVICE_IPS}

    # Once the TTL is over, the cache asks again: changes to the round robin get through.
    before = upstream["A"]
    time.sleep(TTL + 1)
    more = new_mails(5)
    rig.send(more)
    rig.delivered_once(more)
    assert upstream_queries(rig)["A"] == before + 1
