"""The benchmarks' pure parts: bounds, the numbers from a stand-in's events, the report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import measure, report, tables
from benchmarks import verdicts as verdict
from benchmarks.bounds import (
    busy_fraction,
    ideal_rate,
    outside_interval_budget_ms,
    percentile,
    postfix_seconds,
    recovery_bound,
    throughput_bound,
)
from benchmarks.chart import write_chart
from benchmarks.profiles import GUIDE_LIMITS, PROFILES, TUNING, check_profiles
from simworld.netns_rig import relay_settings
from simworld.standin import Event, MessageRecord

RELAY = "198.51.100.2"


def test_bounds() -> None:
    assert throughput_bound(10, 50) == 200
    assert throughput_bound(10, 1000) == 10
    assert [postfix_seconds(v) for v in ("5s", "10m", "1h", "300")] == [5, 600, 3600, 300]
    assert recovery_bound("10s", "5s") == 15
    assert recovery_bound("4000s", "300s") == 4300  # Postfix's defaults
    with pytest.raises(ValueError):
        postfix_seconds("soon")
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.95) == 4.0
    # 0.95 of the bound at 50 ms: 52.63 ms per message, 2.63 of them outside the interval.
    assert outside_interval_budget_ms(50, 0.95) == pytest.approx(2.632, abs=1e-3)
    assert outside_interval_budget_ms(1000, 0.95) == pytest.approx(52.63, abs=1e-2)


def test_profiles_drop_only_what_is_rendered() -> None:
    check_profiles(relay_settings())
    assert PROFILES["stock"].main_cf.keys() == {*TUNING, *GUIDE_LIMITS}
    assert all(v is None for v in PROFILES["stock"].main_cf.values())
    assert not PROFILES["tuned"].main_cf


def sessions_at_full_speed(
    sessions: int, per_session: int, interval: float, gap: float = 0.001
) -> list[Event]:
    """What the stand-in records when ``sessions`` connections each deliver ``per_session``
    messages back to back, ``gap`` seconds between one 250 and the next MAIL FROM."""
    events: list[Event] = []
    for s in range(1, sessions + 1):
        t = 100.0
        events.append({"event": "session_open", "t": t, "session": s, "ip": RELAY, "port": s})
        events.append({"event": "tls", "t": t, "session": s, "ip": RELAY})
        events.append({"event": "auth", "t": t, "session": s, "ip": RELAY, "mechanism": "PLAIN",
                       "tls": True, "user": "u", "result": "ok"})  # fmt: skip
        for _ in range(per_session):
            t += gap
            events.append({"event": "delivery_start", "t": t, "session": s, "ip": RELAY})
            record = MessageRecord(
                session=s, client_ip=RELAY, auth_user="u", tls=True, tls_version="TLSv1.3",
                mail_from="a@b", rcpt_tos=("c@d",), message_id=None, body_sha256="", size=1,
                data=None, session_started_at=100.0, mail_from_at=t, received_at=t,
                accepted_at=t + interval, sessions_open=sessions, sessions_open_from_ip=sessions,
                deliveries_in_progress=1, deliveries_in_progress_from_ip=1,
            )  # fmt: skip
            t += interval
            events.append({"event": "message", "t": t, "session": s, "ip": RELAY,
                           "record": record.to_json()})  # fmt: skip
            events.append({"event": "delivery_end", "t": t, "session": s, "ip": RELAY,
                           "outcome": "accepted"})  # fmt: skip
    return sorted(events, key=lambda e: e["t"])


def run_numbers(
    profile: str = "tuned", interval_ms: int = 200, gap: float = 0.001, released_at: float = 100.0
) -> measure.Throughput:
    events = sessions_at_full_speed(10, 20, interval_ms / 1000, gap)
    return measure.throughput(
        profile=profile, interval_ms=interval_ms, messages=200, session_cap=10,
        relay_ip=RELAY, released_at=released_at, events=events,
        wire={"connections": 10, "peak_open": 10}, deferrals=0, left_in_queue=0,
        next_attempt_s=None, dns_lookups=400, upstream_queries=2,
    )  # fmt: skip


def test_throughput_numbers_from_events() -> None:
    run = run_numbers()
    assert run.delivered == 200
    assert run.bound_msg_s == 50
    # 20 messages of 201 ms per session: 4.02 s for what the bound allows in 4 s.
    assert run.window_s == pytest.approx(4.02)
    assert run.ratio == pytest.approx(4 / 4.02)
    assert run.batch_ratio == run.ratio
    assert run.steady_ratio == pytest.approx(200 / 201, rel=0.02)
    assert (run.peak_sessions_standin, run.peak_deliveries_standin) == (10, 10)
    assert (run.refused_sessions, run.tcp_per_message, run.tls_per_message) == (0, 0.05, 0.05)
    assert run.dns_lookups_per_1000 == 2000
    assert run.timing.gap_ms == pytest.approx(1.0)
    assert run.timing.interval_overshoot_ms == pytest.approx(0.0, abs=1e-6)
    assert run.timing.outside_interval_ms == pytest.approx(1.0)
    assert run.timing.outside_interval_p10_ms == pytest.approx(1.0)


def test_a_cut_off_run_counts_only_what_it_delivered() -> None:
    """A relay still retrying at its time limit: the window ends at the limit, and the batch
    ratio is what was delivered in it (not an upper limit counting the rest)."""
    events = sessions_at_full_speed(10, 10, 0.2)  # 100 of 200 delivered by 102.01
    run = measure.throughput(
        profile="guide", interval_ms=200, messages=200, session_cap=10, relay_ip=RELAY,
        released_at=100.0, events=events, wire={"connections": 10, "peak_open": 10},
        deferrals=5, left_in_queue=100, next_attempt_s=None, dns_lookups=0, upstream_queries=0,
        cut_off_at=110.0,
    )  # fmt: skip
    assert run.cut_off
    assert run.window_s == pytest.approx(10.0)
    assert run.batch_ratio == pytest.approx(100 / 50 / 10)
    row = measure.as_json(run)
    assert tables._at_most(row) == ""
    assert "cut off at 10 s, 100 still queued" in tables.throughput_table([row])


def test_latency_findings_name_the_guides_cut_off_runs() -> None:
    run = measure.as_json(run_numbers(profile="guide")) | {
        "refused_sessions": 300, "tcp_per_message": 3.5, "cut_off": True,
    }  # fmt: skip
    points = [{"rtt_ms": 10.0, "ideal_msg_s": 45.5, "ideal_ratio": 0.03, "run": run}]
    [line] = verdict.latency_findings(points)
    assert "300-300 sessions refused per run" in line
    assert "1 of 1 runs were cut off" in line


def test_failed_runs_are_reported() -> None:
    doc = document(failures=[{"run": "latency guide 50 ms RTT 10 ms", "error": "TimeoutError()"}])
    for text in (report.report_markdown(doc), report.results_markdown(doc)):
        assert "## Runs that failed" in text
        assert "- latency guide 50 ms RTT 10 ms: `TimeoutError()`" in text
    assert "Runs that failed" not in report.report_markdown(document())


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "started_at": "2026-01-01T00:00:00+00:00",
        "wall_s": 1.0,
        "machine": {"nproc": 2, "cpu_model": "cpu", "kernel": "k", "python": "3", "postfix": "3.7",
                    "dnsmasq": "Dnsmasq version 2.90", "load_average": [0.0, 0.0, 0.0]},
        "parameters": {"messages": 200, "session_cap": 10, "ablation_interval_ms": 200,
                       "failures": 3, "outage_s": 30, "outage_messages": 50, "dns_delay_ms": 10,
                       "latency_messages": 200, "relay_messages": 100, "soak_messages": 2,
                       "soak_interval_ms": 50, "soak_outage_s": 30},
        "profiles": {name: {"title": p.title, "main_cf": dict(p.main_cf)}
                     for name, p in PROFILES.items()},
        "throughput": [measure.as_json(run_numbers())],
        "recovery": [measure.as_json(measure.Recovery(
            profile="tuned", scenario="outage", messages=50, bound_s=15, recovered_s=4.0,
            next_attempt_s=None, within_bound=True, failures_seen=0, delivered=50))],
    }  # fmt: skip
    return doc | changes


def test_report_tables_and_verdicts() -> None:
    doc = document()
    text = report.report_markdown(doc)
    assert "| tuned | 200 ms | 50.0 |" in text
    assert "| tuned | outage | 50 | 0 | 4.0 s | 15 s | yes |" in text
    verdicts = dict(verdict.verdicts(doc))
    assert verdicts["zero refused sessions at cap 10, 200 ms (0)"]
    assert verdicts["recovery within the bound, outage"]
    assert any(t.startswith("achieved/bound ≥ 0.95 at 200 ms") and ok for t, ok in verdicts.items())
    assert "PASS: zero refused sessions" in report.results_markdown(doc)


def test_a_run_below_the_target_says_where_it_lost_it() -> None:
    slow = measure.as_json(run_numbers(interval_ms=50, gap=0.004))  # 54 ms per message
    late = measure.as_json(run_numbers(interval_ms=200, released_at=99.5))  # 0.5 s to start
    fast = measure.as_json(run_numbers(interval_ms=1000))
    doc = document(throughput=[slow, late, fast])

    verdicts = verdict.verdicts(doc)
    assert [ok for text, ok in verdicts if text.startswith("achieved/bound")] == [
        False,
        False,
        True,
    ]
    lines = verdict.findings(doc)
    (at_50,) = [line for line in lines if "Rendered settings, 50 ms" in line]
    assert "leaves 2.63 ms per message outside the receiving interval" in at_50
    assert "needed 4.00 ms (fastest tenth 4.00 ms): out of reach per message" in at_50
    (at_200,) = [line for line in lines if "Rendered settings, 200 ms" in line]
    assert "leaves 10.53 ms" in at_200
    assert "within it, so the shortfall is the batch's start and end" in at_200
    (at_1000,) = [line for line in lines if "Rendered settings, 1000 ms" in line]
    assert "leaves" not in at_1000


def test_repeated_runs_are_judged_on_their_median() -> None:
    # Starts 0, 0.1 and 0.5 s late: 0.995, 0.971 and 0.885 of the bound.
    runs = [
        measure.as_json(run_numbers(interval_ms=200, released_at=start))
        for start in (100.0, 99.9, 99.5)
    ]
    doc = document(throughput=runs)

    verdicts = verdict.verdicts(doc)
    assert (
        "achieved/bound ≥ 0.95 at 200 ms (median 0.971 of 0.995, 0.971, 0.885)",
        True,
    ) in verdicts
    assert ("zero refused sessions at cap 10, 200 ms (0 in 3 runs)", True) in verdicts
    (line,) = [x for x in verdict.findings(doc) if x.startswith("Rendered settings")]
    assert line.startswith("Rendered settings, 200 ms (the median of 3 runs):")
    assert "0.971 of the bound" in line


def test_chart_draws_repeated_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the chart needs the bench extra (matplotlib)")
    runs = [measure.as_json(run_numbers(released_at=start)) for start in (100.0, 99.5)]
    chart = tmp_path / "throughput.png"

    write_chart(document(throughput=runs), chart)

    assert chart.read_bytes().startswith(b"\x89PNG")


def test_as_json_turns_nothing_measured_into_null() -> None:
    assert measure.as_json({"x": math.nan, "y": [1.5]}) == {"x": None, "y": [1.5]}


def test_ideal_client_and_cpu_share() -> None:
    # 10 sessions, 50 ms interval, 10 ms round trips: 70 ms per message and session.
    assert ideal_rate(10, 50, 10) == pytest.approx(1000 / 7)
    assert ideal_rate(10, 200, 0) == throughput_bound(10, 200)
    assert busy_fraction((100, 1000), (250, 1200)) == 0.75
    assert math.isnan(busy_fraction((1, 1), (1, 1)))


def test_latency_run_against_the_ideal() -> None:
    run = run_numbers(interval_ms=200)  # 201 ms per message: 4/4.02 of the bound
    point = measure.latency_run(run, rtt_ms=10)
    assert point.ideal_msg_s == pytest.approx(10 * 1000 / 220)
    assert point.ideal_ratio == pytest.approx(run.batch_ratio * 220 / 200)
    assert measure.latency_run(run, rtt_ms=0).ideal_ratio == pytest.approx(run.batch_ratio)


def test_round_trips_are_the_slopes_over_the_rtt() -> None:
    assert tables.slope([(0, 1.0), (10, 21.0), (30, 61.0)]) == pytest.approx(2.0)
    assert tables.slope([(2, 1.0), (2, 3.0)]) is None
    points = []
    for rtt in (0, 10, 30):
        point = measure.as_json(measure.latency_run(run_numbers(interval_ms=200), rtt))
        # The relay's turn-around grows by two round trips per RTT, its transaction by one.
        point["run"]["timing"] |= {"gap_ms": 1 + 2 * rtt, "transaction_ms": 1 + rtt,
                                   "outside_interval_ms": 2 + 3 * rtt}  # fmt: skip
        points.append(point)
    parts = tables.round_trips(points)[("tuned", 200)]
    assert parts == pytest.approx(
        {"transaction_ms": 1.0, "gap_ms": 2.0, "outside_interval_ms": 3.0}
    )
    doc = document(latency=points)
    verdicts = dict(verdict.verdicts(doc))
    assert [ok for text, ok in verdicts.items() if text.startswith("achieved/ideal")] == [
        True,  # RTT 0: 0.995 of the ideal
        True,  # the made-up timings do not change the ratios
        True,
    ]
    assert "| tuned | 200 ms | 2.00 | 1.00 | 3.00 |" not in report.report_markdown(doc)
    assert "| tuned | 200 ms | 1.00 | 2.00 | 3.00 |" in report.report_markdown(doc)


def relays_run(relays: int, rate: float) -> dict[str, Any]:
    ips = ["198.51.100.2", "198.51.100.3", "198.51.100.4"][:relays]
    return measure.as_json(measure.MultiRelay(
        profile="tuned", relays=relays, interval_ms=200, messages=100 * relays,
        bound_msg_s=50.0 * relays, delivered=100 * relays, window_s=100 * relays / rate,
        achieved_msg_s=rate, ratio=rate / (50 * relays), peak_sessions_by_ip=dict.fromkeys(ips, 10),
        refused_sessions=0, left_in_queue=0, cpu_busy=0.5,
    ))  # fmt: skip


def test_several_relays_are_judged_against_n_times_one() -> None:
    doc = document(relays=[relays_run(1, 48.0), relays_run(2, 95.0), relays_run(3, 120.0)])
    assert tables.one_host_rates(doc["relays"]) == {200: 48.0}
    verdicts = dict(verdict.verdicts(doc))
    assert verdicts["2 relays at 200 ms: ≥ 0.95 x 2 x one relay (0.990)"]
    assert not verdicts["3 relays at 200 ms: ≥ 0.95 x 3 x one relay (0.833)"]
    assert verdicts["3 relays at 200 ms: at most 10 sessions per sending IP (peak 10), 0 refused"]
    assert "| 3 | 200 ms | 150.0 | 120.0 | 0.800 | 0.833 | 300/300 | 10, 10, 10 | 0 | 50% |" in (
        report.report_markdown(doc)
    )


def record(message_id: str | None, body: str) -> MessageRecord:
    return MessageRecord(
        session=1, client_ip=RELAY, auth_user="u", tls=True, tls_version="TLSv1.3",
        mail_from="a@b", rcpt_tos=("c@d",), message_id=message_id, body_sha256=body, size=1,
        data=None, session_started_at=0.0, mail_from_at=1.0, received_at=1.0, accepted_at=2.0,
        sessions_open=1, sessions_open_from_ip=1, deliveries_in_progress=1,
        deliveries_in_progress_from_ip=1,
    )  # fmt: skip


def test_exactly_once_accounting() -> None:
    expected = {"<a>": "ha", "<b>": "hb", "<c>": "hc", "<d>": "hd"}
    records = [record("<a>", "ha"), record("<b>", "hb"), record("<b>", "hb"),
               record("<c>", "xx"), record(None, "hn"), record("<z>", "hz")]  # fmt: skip
    tally = measure.delivered(expected, records)
    assert (tally.expected, tally.arrived, tally.once, tally.duplicated) == (4, 6, 2, 1)
    assert (tally.lost, tally.damaged, tally.unexpected) == (1, 1, 2)
    assert not tally.exactly_once
    assert measure.delivered({"<a>": "ha"}, [record("<a>", "ha")]).exactly_once


def test_soak_numbers_and_verdict() -> None:
    soak = measure.soak(
        profile="tuned", stop="plain", interval_ms=50, session_cap=10, outage_s=30,
        released_at=0.0, outage_at=40.0, restart_at=90.0, expected={"<a>": "ha", "<b>": "hb"},
        records=[record("<a>", "ha"), record("<b>", "hb"), record("<b>", "hb")],
        refused_sessions=0, bounces=0, deferrals=3,
        postfix_kb={"rss": 204800, "pss": 102400}, standin_kb={"rss": 51200, "pss": 40960},
    )  # fmt: skip
    assert soak.drain_s == 2.0
    assert soak.drain_bound_s == pytest.approx(2 / 200 + 30)
    assert (soak.postfix_peak_rss_mb, soak.postfix_peak_pss_mb) == (200, 100)
    doc = document(soak=[measure.as_json(soak)])
    (text, ok) = next(v for v in verdict.verdicts(doc) if v[0].startswith("soak"))
    assert not ok and "(1; 1 duplicated, 0 lost, 0 damaged), 0 bounced" in text
    assert "| duplicated / lost / damaged / unexpected | 1 / 0 / 0 / 0 |" in (
        report.report_markdown(doc)
    )
