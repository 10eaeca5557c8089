"""The physical limits the measurements are compared with (pure functions)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_POSTFIX_TIME = re.compile(r"^(?P<number>\d+)(?P<unit>[smhdw]?)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def throughput_bound(sessions: int, interval_ms: float) -> float:
    """Messages per second the service accepts from one sending IP: each of its ``sessions``
    holds a message for the receiving interval."""
    return sessions * 1000 / interval_ms


def ideal_rate(sessions: int, interval_ms: float, rtt_ms: float) -> float:
    """Messages per second of an ideal client over a network with round trip ``rtt_ms``: per
    message and session the receiving interval plus two round trips, one for the pipelined
    envelope (MAIL, RCPT, DATA up to its 354) and one from the final dot's 250 to the next."""
    return sessions * 1000 / (interval_ms + 2 * rtt_ms)


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of CPU time not idle between two (busy, total) tick counts of /proc/stat."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total > 0 else math.nan


def outside_interval_budget_ms(interval_ms: float, ratio: float) -> float:
    """Time per message a session may spend outside the receiving interval (its transaction,
    the wait for each reply, the client's turn-around) and still reach ``ratio`` of the bound."""
    return interval_ms / ratio - interval_ms


def postfix_seconds(value: str) -> int:
    """A Postfix time parameter in seconds: ``300s``, ``5m``, ``1h``; a bare number is seconds
    (the unit of every parameter used here)."""
    match = _POSTFIX_TIME.match(value.strip())
    if not match:
        raise ValueError(f"not a Postfix time value: {value!r}")
    return int(match["number"]) * _UNIT_SECONDS[match["unit"] or "s"]


def recovery_bound(maximal_backoff_time: str, queue_run_delay: str) -> int:
    """Seconds from the service being usable again to a deferred message's next attempt, at the
    latest: its retry is at most ``maximal_backoff_time`` away, and the queue manager looks at
    the deferred queue every ``queue_run_delay``."""
    return postfix_seconds(maximal_backoff_time) + postfix_seconds(queue_run_delay)


def per_thousand(count: int, messages: int) -> float:
    return 1000 * count / messages if messages else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
