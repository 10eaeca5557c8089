"""The benchmark, run small so it cannot rot: its JSON's shape, not its speeds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from simworld.netns_rig import missing_requirements

pytestmark = pytest.mark.integration

THROUGHPUT_KEYS = {
    "profile", "interval_ms", "messages", "bound_msg_s", "delivered", "achieved_msg_s", "ratio",
    "batch_ratio", "refused_sessions", "peak_sessions_standin", "peak_open_wire",
    "tcp_per_message", "tls_per_message", "dns_lookups_per_1000", "upstream_queries_per_1000",
    "left_in_queue", "timing",
}  # fmt: skip
RECOVERY_KEYS = {"profile", "scenario", "bound_s", "recovered_s", "next_attempt_s", "within_bound"}


def test_benchmark_smoke(tmp_path: Path) -> None:
    missing = missing_requirements()
    if missing:
        pytest.skip(f"integration rig needs: {', '.join(missing)}")
    results, reports = tmp_path / "results", tmp_path / "report"
    status = main(
        [
            "--messages", "6", "--intervals", "50", "--profiles", "tuned,stock", "--repeats", "2",
            "--sections", "throughput,ceiling,recovery,dns", "--failures", "1",
            "--outage-seconds", "2", "--outage-messages", "2", "--dns-rounds", "2",
            "--results-dir", str(results), "--report-dir", str(reports),
        ]
    )  # fmt: skip
    [path] = results.glob("*.json")
    document = json.loads(path.read_text())
    assert document["failures"] == []
    assert status == 0
    assert set(document) >= {
        "machine",
        "parameters",
        "profiles",
        "throughput",
        "ceiling",
        "recovery",
        "dns_latency",
    }
    assert {"nproc", "cpu_model", "kernel"} <= set(document["machine"])
    # The rendered settings are repeated, the baselines are not.
    assert [(r["profile"], r["interval_ms"]) for r in document["throughput"]] == [
        ("tuned", 50),
        ("tuned", 50),
        ("stock", 50),
    ]
    for run in document["throughput"] + document["ceiling"]:
        assert set(run) >= THROUGHPUT_KEYS
    assert document["throughput"][0]["delivered"] == 6
    assert [r["profile"] for r in document["ceiling"]] == ["direct", "direct"]
    assert document["parameters"]["repeats"] == 2
    assert [(r["profile"], r["scenario"]) for r in document["recovery"]] == [
        (p, s) for p in ("tuned", "stock") for s in ("451x1", "421x1", "outage")
    ]
    for run in document["recovery"]:
        assert set(run) >= RECOVERY_KEYS
    assert {"cache_hit", "cache_miss", "direct"} <= set(document["dns_latency"])
    assert path.with_suffix(".md").exists()
    report = (reports / "REPORT.md").read_text()
    assert "## Throughput" in report
    assert "achieved/bound ≥ 0.95 at 50 ms (median " in report
    if importlib.util.find_spec("matplotlib"):
        assert (reports / "throughput.png").stat().st_size > 0


LATENCY_KEYS = {"rtt_ms", "ideal_msg_s", "ideal_ratio", "run"}
RELAYS_KEYS = {
    "relays", "interval_ms", "messages", "bound_msg_s", "delivered", "achieved_msg_s", "ratio",
    "peak_sessions_by_ip", "refused_sessions", "cpu_busy",
}  # fmt: skip


def test_benchmark_smoke_latency_relays_soak(tmp_path: Path) -> None:
    missing = missing_requirements()
    if missing:
        pytest.skip(f"integration rig needs: {', '.join(missing)}")
    results, reports = tmp_path / "results", tmp_path / "report"
    status = main(
        [
            "--sections", "latency,relays,soak", "--intervals", "50", "--rtts", "0,2",
            "--latency-clients", "tuned,direct", "--latency-messages", "6",
            "--relays", "1,2", "--relay-intervals", "50", "--relay-messages", "4",
            "--soak-messages", "20", "--soak-interval", "50", "--soak-outage-seconds", "1",
            "--results-dir", str(results), "--report-dir", str(reports),
        ]
    )  # fmt: skip
    [path] = results.glob("*.json")
    document = json.loads(path.read_text())
    assert document["failures"] == []
    assert status == 0
    assert [(p["run"]["profile"], p["rtt_ms"]) for p in document["latency"]] == [
        ("tuned", 0), ("direct", 0), ("tuned", 2), ("direct", 2),
    ]  # fmt: skip
    for point in document["latency"]:
        assert set(point) >= LATENCY_KEYS
        assert set(point["run"]) >= THROUGHPUT_KEYS
        assert point["run"]["delivered"] == 6
    assert [r["relays"] for r in document["relays"]] == [1, 2]
    two = document["relays"][1]
    assert set(two) >= RELAYS_KEYS
    # Each relay's own address reached the stand-in, and only it counts against its cap.
    assert list(two["peak_sessions_by_ip"]) == ["198.51.100.2", "198.51.100.3"]
    assert all(
        0 < n <= document["parameters"]["session_cap"] for n in two["peak_sessions_by_ip"].values()
    )
    assert two["delivered"] == two["messages"] == 8
    plain, graceful = document["soak"]
    assert (plain["stop"], graceful["stop"]) == ("plain", "graceful")
    for soak in (plain, graceful):
        a = soak["accounting"]
        assert a["expected"] == 20 and a["lost"] == 0 and a["damaged"] == 0, a
        assert a["once"] + a["duplicated"] == a["expected"]
        assert soak["bounces"] == 0
        assert soak["postfix_peak_pss_mb"] > 0
    # Nothing is cut short by the graceful stop: each message exactly once.
    assert graceful["accounting"]["once"] == graceful["accounting"]["arrived"] == 20
    report = (reports / "REPORT.md").read_text()
    assert "## Latency" in report and "## Several sending IPs" in report and "## Soak" in report
    assert "achieved/ideal ≥ 0.95 at 50 ms, RTT 2 ms (" in report
