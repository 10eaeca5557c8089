"""From what the stand-in, the wire and Postfix recorded to the numbers reported (pure).

Times are the stand-in's event times (Unix time, one clock for every process on the machine).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.bounds import ideal_rate, per_thousand, percentile, throughput_bound
from simworld.standin import Event, MessageRecord, messages_from_events, stats_from_events

# Steady state: the middle of a batch, without the first connections and the last stragglers.
STEADY_FROM, STEADY_TO = 0.1, 0.9


@dataclass(frozen=True)
class Timing:
    """Per message, medians in ms, as the stand-in saw them."""

    cycle_ms: float
    """Sessions x window / messages: how long each session spent per message."""
    gap_ms: float
    """From the 250 for one message to the MAIL FROM of the next on the same session: the
    relay's own per-message work (and the wire)."""
    transaction_ms: float
    """MAIL FROM to end of DATA."""
    interval_overshoot_ms: float
    """The stand-in's receiving interval as it really took, less its nominal value."""
    outside_interval_ms: float
    """Per cycle (one 250 to the next on the same session), the time outside the nominal
    interval: the overshoot, the transaction and the gap together."""
    outside_interval_p10_ms: float
    """Its 10th percentile: what the fastest cycles needed."""


@dataclass(frozen=True)
class Throughput:
    profile: str
    interval_ms: int
    messages: int
    session_cap: int
    bound_msg_s: float
    delivered: int
    window_s: float
    """From releasing the backlog to the service's 250 for the last message delivered."""
    achieved_msg_s: float
    """Messages delivered / window."""
    ratio: float
    """achieved_msg_s / bound."""
    batch_ratio: float
    """The time the whole batch needs at the bound / the time it took. Equals ``ratio`` when
    every message was delivered; otherwise an upper limit, counting the rest as delivered at
    their next attempt."""
    steady_ratio: float
    """Achieved/bound between the 10th and the 90th percentile of the deliveries."""
    first_delivery_s: float
    """Release to the first MAIL FROM: queue scan, DNS, TCP, TLS and AUTH."""
    refused_sessions: int
    refused_by_reason: dict[str, int]
    peak_sessions_standin: int
    peak_deliveries_standin: int
    peak_open_wire: int
    connections_wire: int
    tcp_per_message: float
    tls_per_message: float
    auth_per_message: float
    deferrals: int
    """Delivery attempts Postfix logged as deferred (a refused session, a 4xx reply)."""
    left_in_queue: int
    """Messages still deferred when the run ended (their next attempt beyond the horizon)."""
    next_attempt_s: float | None
    """For those: seconds from the end of the run to the earliest next attempt."""
    cut_off: bool
    """The run reached its time limit with messages still being retried: the window ends at
    the limit and ``batch_ratio`` counts only what was delivered."""
    dns_lookups_per_1000: float
    """Queries for the service's name that Postfix sent to the local cache; without a cache
    every one of them goes to the upstream resolver."""
    upstream_queries_per_1000: float
    timing: Timing


def throughput(
    *,
    profile: str,
    interval_ms: int,
    messages: int,
    session_cap: int,
    relay_ip: str,
    released_at: float,
    events: Sequence[Event],
    wire: Mapping[str, int],
    deferrals: int,
    left_in_queue: int,
    next_attempt_s: float | None,
    dns_lookups: int,
    upstream_queries: int,
    cut_off_at: float | None = None,
) -> Throughput:
    """One throughput run's numbers; ``released_at`` is when the held backlog was let go,
    ``cut_off_at`` when the run's time limit ended it (None: it settled)."""
    stats = stats_from_events(events)
    records = messages_from_events(events)
    peak_sessions = stats.peak_sessions_by_ip.get(relay_ip, 0)
    accepted = sorted(r.accepted_at for r in records)
    starts = [e["t"] for e in events if e["event"] == "delivery_start"]
    delivered = len(accepted)
    if cut_off_at is not None:
        window = cut_off_at - released_at
    else:
        window = accepted[-1] - released_at if accepted else 0.0
    bound = throughput_bound(session_cap, interval_ms)
    achieved = delivered / window if window > 0 else 0.0
    counted = delivered if cut_off_at is not None else messages
    return Throughput(
        profile=profile,
        interval_ms=interval_ms,
        messages=messages,
        session_cap=session_cap,
        bound_msg_s=bound,
        delivered=delivered,
        window_s=window,
        achieved_msg_s=achieved,
        ratio=achieved / bound,
        batch_ratio=counted / bound / (window + (next_attempt_s or 0.0)) if window > 0 else 0.0,
        steady_ratio=steady_rate(accepted) / bound,
        first_delivery_s=min(starts) - released_at if starts else float("nan"),
        refused_sessions=stats.refused_sessions,
        refused_by_reason=dict(stats.refused_by_reason),
        peak_sessions_standin=peak_sessions,
        peak_deliveries_standin=stats.peak_deliveries_by_ip.get(relay_ip, 0),
        peak_open_wire=wire["peak_open"],
        connections_wire=wire["connections"],
        tcp_per_message=_per_message(wire["connections"], delivered),
        tls_per_message=_per_message(stats.tls_handshakes, delivered),
        auth_per_message=_per_message(stats.auth_ok, delivered),
        deferrals=deferrals,
        left_in_queue=left_in_queue,
        next_attempt_s=next_attempt_s,
        cut_off=cut_off_at is not None,
        dns_lookups_per_1000=per_thousand(dns_lookups, delivered),
        upstream_queries_per_1000=per_thousand(upstream_queries, delivered),
        timing=timing(events, records, interval_ms, peak_sessions, window),
    )


def steady_rate(accepted: Sequence[float]) -> float:
    """Messages per second between the 10th and 90th percentile of acceptance times."""
    if len(accepted) < 10:
        return float("nan")
    first = int(STEADY_FROM * (len(accepted) - 1))
    last = int(STEADY_TO * (len(accepted) - 1))
    span = accepted[last] - accepted[first]
    return (last - first) / span if span > 0 else float("nan")


def timing(
    events: Sequence[Event],
    records: Sequence[MessageRecord],
    interval_ms: int,
    sessions: int,
    window: float,
) -> Timing:
    """Per-message timing from the events and the messages recorded in them."""
    gaps: list[float] = []
    ended: dict[int, float] = {}
    for event in events:
        if event["event"] == "delivery_end":
            ended[event["session"]] = event["t"]
        elif event["event"] == "delivery_start" and event["session"] in ended:
            gaps.append(1000 * (event["t"] - ended[event["session"]]))
    transactions = [1000 * (r.received_at - r.mail_from_at) for r in records]
    overshoots = [1000 * (r.accepted_at - r.received_at) - interval_ms for r in records]
    accepted: dict[int, list[float]] = {}
    for r in records:
        accepted.setdefault(r.session, []).append(r.accepted_at)
    outside = [
        1000 * (later - earlier) - interval_ms
        for times in accepted.values()
        for earlier, later in itertools.pairwise(sorted(times))
    ]
    return Timing(
        cycle_ms=1000 * sessions * window / len(records) if records else float("nan"),
        gap_ms=_median(gaps),
        transaction_ms=_median(transactions),
        interval_overshoot_ms=_median(overshoots),
        outside_interval_ms=_median(outside),
        outside_interval_p10_ms=percentile(outside, 0.1) if outside else float("nan"),
    )


@dataclass(frozen=True)
class LatencyRun:
    """A throughput run through the delaying proxy, against the bound and the ideal client."""

    rtt_ms: float
    ideal_msg_s: float
    """sessions x 1000 / (interval + 2 x RTT): see ``bounds.ideal_rate``."""
    ideal_ratio: float
    """The batch's time at the ideal rate / the time it took (like ``batch_ratio``)."""
    run: Throughput


def latency_run(run: Throughput, rtt_ms: float) -> LatencyRun:
    ideal = ideal_rate(run.session_cap, run.interval_ms, rtt_ms)
    return LatencyRun(
        rtt_ms=rtt_ms,
        ideal_msg_s=ideal,
        ideal_ratio=run.batch_ratio * run.bound_msg_s / ideal,
        run=run,
    )


@dataclass(frozen=True)
class MultiRelay:
    """Several relays, one sending address each, draining to one stand-in at once."""

    profile: str
    relays: int
    interval_ms: int
    messages: int
    """All relays together."""
    bound_msg_s: float
    """relays x sessions x 1000 / interval: the cap is per sending address."""
    delivered: int
    window_s: float
    achieved_msg_s: float
    ratio: float
    """achieved / bound."""
    peak_sessions_by_ip: dict[str, int]
    refused_sessions: int
    left_in_queue: int
    cpu_busy: float
    """Share of the machine's CPU time in use from the release to the end of the run."""


def multi_relay(
    *,
    profile: str,
    interval_ms: int,
    messages: int,
    session_cap: int,
    relay_ips: Sequence[str],
    released_at: float,
    events: Sequence[Event],
    left_in_queue: int,
    cpu_busy: float,
) -> MultiRelay:
    stats = stats_from_events(events)
    accepted = [r.accepted_at for r in messages_from_events(events)]
    window = max(accepted) - released_at if accepted else 0.0
    bound = len(relay_ips) * throughput_bound(session_cap, interval_ms)
    achieved = len(accepted) / window if window > 0 else 0.0
    return MultiRelay(
        profile=profile,
        relays=len(relay_ips),
        interval_ms=interval_ms,
        messages=messages,
        bound_msg_s=bound,
        delivered=len(accepted),
        window_s=window,
        achieved_msg_s=achieved,
        ratio=achieved / bound,
        peak_sessions_by_ip={ip: stats.peak_sessions_by_ip.get(ip, 0) for ip in relay_ips},
        refused_sessions=stats.refused_sessions,
        left_in_queue=left_in_queue,
        cpu_busy=cpu_busy,
    )


@dataclass(frozen=True)
class Delivered:
    """Each expected message against what arrived, by Message-ID and body hash."""

    expected: int
    arrived: int
    """Records at the stand-in, duplicates included."""
    once: int
    duplicated: int
    """Messages that arrived more than once."""
    lost: int
    damaged: int
    """Arrivals whose body hash differs from what was sent."""
    unexpected: int
    """Arrivals with a Message-ID that was never sent (a bounce, a notice)."""

    @property
    def exactly_once(self) -> bool:
        return self.once == self.expected and self.arrived == self.expected


def delivered(expected: Mapping[str, str], records: Sequence[MessageRecord]) -> Delivered:
    """``expected``: Message-ID -> body SHA-256 of every message sent."""
    counts: dict[str, int] = {}
    damaged = unexpected = 0
    for r in records:
        if r.message_id is None or r.message_id not in expected:
            unexpected += 1
            continue
        counts[r.message_id] = counts.get(r.message_id, 0) + 1
        damaged += r.body_sha256 != expected[r.message_id]
    return Delivered(
        expected=len(expected),
        arrived=len(records),
        once=sum(n == 1 for n in counts.values()),
        duplicated=sum(n > 1 for n in counts.values()),
        lost=len(expected) - len(counts),
        damaged=damaged,
        unexpected=unexpected,
    )


@dataclass(frozen=True)
class Soak:
    profile: str
    stop: str
    """How Postfix was stopped and started: ``plain`` or ``graceful``."""
    interval_ms: int
    messages: int
    outage_s: float
    accounting: Delivered
    bounces: int
    """Postfix's ``status=bounced`` lines."""
    refused_sessions: int
    deferrals: int
    drain_s: float
    """From the release to the last 250."""
    drain_bound_s: float
    """messages / bound + the outage: no client drains faster."""
    outage_at_s: float
    restart_at_s: float
    """When the outage began and Postfix was stopped, from the release."""
    postfix_peak_rss_mb: float
    """Peak of the summed resident memory of the relay's Postfix processes (sampled); shared
    pages count once per process."""
    postfix_peak_pss_mb: float
    """The same with shared pages divided among the processes sharing them."""
    standin_peak_rss_mb: float


def soak(
    *,
    profile: str,
    stop: str,
    interval_ms: int,
    session_cap: int,
    outage_s: float,
    released_at: float,
    outage_at: float,
    restart_at: float,
    expected: Mapping[str, str],
    records: Sequence[MessageRecord],
    refused_sessions: int,
    bounces: int,
    deferrals: int,
    postfix_kb: Mapping[str, int],
    standin_kb: Mapping[str, int],
) -> Soak:
    last = max((r.accepted_at for r in records), default=released_at)
    return Soak(
        profile=profile,
        stop=stop,
        interval_ms=interval_ms,
        messages=len(expected),
        outage_s=outage_s,
        accounting=delivered(expected, records),
        bounces=bounces,
        refused_sessions=refused_sessions,
        deferrals=deferrals,
        drain_s=last - released_at,
        drain_bound_s=len(expected) / throughput_bound(session_cap, interval_ms) + outage_s,
        outage_at_s=outage_at - released_at,
        restart_at_s=restart_at - released_at,
        postfix_peak_rss_mb=postfix_kb["rss"] / 1024,
        postfix_peak_pss_mb=postfix_kb["pss"] / 1024,
        standin_peak_rss_mb=standin_kb["rss"] / 1024,
    )


@dataclass(frozen=True)
class Recovery:
    profile: str
    scenario: str
    """``451xN`` (N replies 451 at end of DATA), ``421xN`` (N greetings 421), ``outage``."""
    messages: int
    bound_s: int
    """maximal_backoff_time + queue_run_delay, as configured."""
    recovered_s: float | None
    """From the service being usable again to the last message delivered; None if the run
    stopped because Postfix had scheduled nothing within the horizon."""
    next_attempt_s: float | None
    """When recovered_s is None: when Postfix would try next, from the same starting point."""
    within_bound: bool | None
    failures_seen: int
    delivered: int


@dataclass(frozen=True)
class Latency:
    """DNS lookups of the service's name, in ms."""

    count: int
    p50_ms: float
    p95_ms: float
    max_ms: float


def latency(samples_ms: Sequence[float]) -> Latency:
    return Latency(
        count=len(samples_ms),
        p50_ms=percentile(samples_ms, 0.5),
        p95_ms=percentile(samples_ms, 0.95),
        max_ms=max(samples_ms),
    )


@dataclass(frozen=True)
class DnsLatency:
    upstream_delay_ms: float
    """Added to every answer of the upstream resolver (a delaying forwarder in front of it)."""
    ttl_s: int
    cache_hit: Latency
    cache_miss: Latency
    """The first lookup after the TTL ran out: the cache asks upstream."""
    direct: Latency
    """Straight to the upstream resolver, as a host without the cache does."""


def _per_message(count: int, messages: int) -> float:
    return count / messages if messages else float("nan")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def as_json(value: Any) -> Any:
    """Dataclasses to plain JSON values; NaN (nothing to measure) to null."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: as_json(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
