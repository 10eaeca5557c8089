"""The committed report's chart, ``throughput.png`` (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.tables import Row, ceiling_by_interval, median_run, repeated
from benchmarks.verdicts import TARGET_RATIO


def can_chart() -> bool:
    """matplotlib is an optional dependency (the ``bench`` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_chart(results: Row, path: Path) -> None:
    """Achieved/bound per receiving interval and profile, with the target; refused sessions
    next to it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    runs = results.get("throughput", [])
    points = results.get("latency", [])
    rows = bool(runs) + bool(points)
    if not rows:
        return
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.2 * rows), squeeze=False)
    if runs:
        _throughput_chart(results, axes[0][0], axes[0][1])
    if points:
        _latency_chart(results, axes[-1][0], axes[-1][1])
    fig.suptitle(
        f"stand-in with {results['parameters']['session_cap']} sessions per sending IP; "
        f"{results['machine']['nproc']} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_chart(results: Row, left: Any, right: Any) -> None:
    """Achieved/bound over the RTT per interval (relay and minimal client) beside the ideal
    client's curve; achieved/ideal on the right."""
    points = results["latency"]
    intervals = sorted({p["run"]["interval_ms"] for p in points})
    clients = list(dict.fromkeys(p["run"]["profile"] for p in points))
    styles = {"tuned": "-", "guide": "-.", "direct": ":"}
    colours = ["C0", "C1", "C2", "C3", "C4"]
    for colour, interval in zip(colours, intervals, strict=False):
        rtts = sorted({p["rtt_ms"] for p in points if p["run"]["interval_ms"] == interval})
        left.plot(rtts, [interval / (interval + 2 * r) for r in rtts], color=colour,
                  linestyle="--", linewidth=0.8, alpha=0.6)  # fmt: skip
        for client in clients:
            mine = sorted(
                (p["rtt_ms"], p)
                for p in points
                if p["run"]["interval_ms"] == interval and p["run"]["profile"] == client
            )
            xs = [x for x, _ in mine]
            style = styles.get(client, "-")
            left.plot(xs, [q["run"]["batch_ratio"] for _, q in mine], color=colour,
                      linestyle=style, marker="o", markersize=3,
                      label=f"{client} {interval} ms")  # fmt: skip
            right.plot(xs, [q["ideal_ratio"] for _, q in mine], color=colour, linestyle=style,
                       marker="o", markersize=3, label=f"{client} {interval} ms")  # fmt: skip
    left.set_title("achieved / bound over the RTT (dashed: the ideal client)", fontsize=10)
    right.set_title("achieved / ideal (interval + 2 RTT per message)", fontsize=10)
    right.axhline(TARGET_RATIO, color="grey", linestyle="--", linewidth=0.8)
    for axis in (left, right):
        axis.set_xlabel("round trip time, ms")
        axis.set_ylim(0, 1.1)
        axis.legend(fontsize=6, ncol=3, loc="lower left")


def _throughput_chart(results: Row, left: Any, right: Any) -> None:
    runs = results["throughput"]
    intervals = sorted({r["interval_ms"] for r in runs})
    profiles = list(dict.fromkeys(r["profile"] for r in runs))
    width = 0.8 / len(profiles)

    def bars(axis: Any, value: Callable[[Row], float]) -> None:
        # Repeated runs: the median run's value, whiskers from the lowest to the highest.
        for i, profile in enumerate(profiles):
            by_interval = repeated(runs, profile)
            xs = [j + (i - (len(profiles) - 1) / 2) * width for j in range(len(intervals))]
            spans = [[value(r) for r in by_interval.get(t, [])] or [0.0] for t in intervals]
            ys = [value(median_run(by_interval[t])) if t in by_interval else 0.0 for t in intervals]
            errors = [[y - min(v) for y, v in zip(ys, spans, strict=True)],
                      [max(v) - y for y, v in zip(ys, spans, strict=True)]]  # fmt: skip
            single = all(len(v) == 1 for v in spans)
            drawn = axis.bar(xs, ys, width, label=profile, yerr=None if single else errors,
                             capsize=2)  # fmt: skip
            axis.bar_label(drawn, fmt="%.2f" if axis is left else "%d", fontsize=7)
        axis.set_xticks(range(len(intervals)), [f"{t} ms" for t in intervals])
        axis.set_xlabel("receiving interval")

    bars(left, lambda r: r["batch_ratio"])
    ceiling = ceiling_by_interval(results)
    for j, interval in enumerate(intervals):
        if interval in ceiling:
            label = "minimal client (rig ceiling)" if j == 0 else None
            left.hlines(ceiling[interval]["batch_ratio"], j - 0.45, j + 0.45, colors="black",
                        linestyles=":", label=label)  # fmt: skip
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(TARGET_RATIO, color="grey", linestyle="--", linewidth=0.8, label="target")
    left.set_ylim(0, 1.3)
    left.set_title("whole batch: achieved / bound (median run; whiskers: range)", fontsize=10)
    left.legend(fontsize=7, loc="upper center", ncol=3)
    bars(right, lambda r: r["refused_sessions"])
    right.set_ylim(0, 1.15 * max(1, *(r["refused_sessions"] for r in runs)))
    cap = runs[0]["session_cap"]
    right.set_title(f"sessions refused by the service (cap {cap}), {runs[0]['messages']} msgs")
