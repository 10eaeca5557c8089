"""Results (the JSON document) to Markdown tables, the committed report and its chart.

Everything but ``write_chart`` is a pure function of the results document.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.bounds import outside_interval_budget_ms

Row = Mapping[str, Any]

TARGET_RATIO = 0.95


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _delivered(run: Row) -> str:
    text = f"{run['delivered']}/{run['messages']}"
    if run.get("cut_off"):
        text += f" (cut off at {run['window_s']:.0f} s, {run['left_in_queue']} still queued)"
    elif run["left_in_queue"]:
        text += f" ({run['left_in_queue']} deferred, next try in {run['next_attempt_s']:.0f} s)"
    return text


def _at_most(run: Row) -> str:
    """A batch ratio that counts deferred messages as delivered at their next try is an upper
    limit; a cut-off run's counts only what was delivered."""
    return "≤ " if run["left_in_queue"] and not run.get("cut_off") else ""


def failures_section(results: Row) -> str:
    """The runs that failed (a crash or a time-out of the harness, not a slow result): the
    rest of the run's numbers stand without them."""
    failures = results.get("failures") or []
    if not failures:
        return ""
    lines = "".join(f"- {f['run']}: `{f['error']}`\n" for f in failures)
    return f"## Runs that failed\n\n{len(failures)} run(s) did not finish:\n\n{lines}"


def throughput_table(runs: Sequence[Row]) -> str:
    headers = [
        "profile", "interval", "bound msg/s", "achieved msg/s", "achieved/bound", "steady state",
        "delivered", "refused sessions", "peak sessions stand-in / wire", "TCP+TLS per msg",
        "AUTH per msg", "deferrals", "ms per msg per session (gap)",
    ]  # fmt: skip
    rows = [
        [
            r["profile"],
            f"{r['interval_ms']} ms",
            _num(r["bound_msg_s"]),
            _num(r["achieved_msg_s"]),
            _at_most(r) + _num(r["batch_ratio"], 3),
            _num(r["steady_ratio"], 3),
            _delivered(r),
            str(r["refused_sessions"]),
            f"{r['peak_sessions_standin']} / {r['peak_open_wire']}",
            f"{_num(r['tcp_per_message'], 3)} / {_num(r['tls_per_message'], 3)}",
            _num(r["auth_per_message"], 3),
            str(r["deferrals"]),
            f"{_num(r['timing']['cycle_ms'])} ({_num(r['timing']['gap_ms'])})",
        ]
        for r in runs
    ]
    return _table(headers, rows)


def recovery_table(runs: Sequence[Row]) -> str:
    def outcome(r: Row) -> str:
        if r["recovered_s"] is not None:
            return f"{r['recovered_s']:.1f} s"
        return f"not waited for: next attempt {_num(r['next_attempt_s'], 0)} s later"

    def verdict(r: Row) -> str:
        return {True: "yes", False: "**no**", None: "-"}[r["within_bound"]]

    headers = [
        "profile",
        "scenario",
        "messages",
        "failures seen",
        "recovered after",
        "bound",
        "within",
    ]
    rows = [
        [
            r["profile"],
            r["scenario"],
            str(r["messages"]),
            str(r["failures_seen"]),
            outcome(r),
            f"{r['bound_s']} s",
            verdict(r),
        ]
        for r in runs
    ]
    return _table(headers, rows)


def dns_tables(results: Row) -> str:
    throughput_rows = [
        [
            r["profile"],
            f"{r['interval_ms']} ms",
            _num(r["dns_lookups_per_1000"], 0),
            _num(r["upstream_queries_per_1000"], 1),
        ]
        for r in results["throughput"]
    ]
    out = _table(
        ["profile", "interval", "lookups per 1000 msgs (= upstream queries without the cache)",
         "upstream queries per 1000 msgs with the cache"],
        throughput_rows,
    )  # fmt: skip
    latency = results.get("dns_latency")
    if latency:
        rows = [
            [
                name,
                str(v["count"]),
                _num(v["p50_ms"], 2),
                _num(v["p95_ms"], 2),
                _num(v["max_ms"], 2),
            ]
            for name, v in (
                ("through the cache, hit", latency["cache_hit"]),
                ("through the cache, miss (TTL ran out)", latency["cache_miss"]),
                ("straight to the upstream", latency["direct"]),
            )
        ]
        out += (
            f"\nLookup latency, upstream {latency['upstream_delay_ms']:g} ms away "
            f"(TTL {latency['ttl_s']} s so that misses occur):\n\n"
        )
        out += _table(["lookup", "n", "p50 ms", "p95 ms", "max ms"], rows)
    return out


def latency_table(points: Sequence[Row]) -> str:
    headers = [
        "client", "interval", "RTT", "bound msg/s", "ideal msg/s", "achieved msg/s",
        "achieved/bound", "achieved/ideal", "refused sessions", "TCP per msg",
        "ms per msg per session", "MAIL FROM to end of DATA", "250 to next MAIL FROM",
    ]  # fmt: skip
    rows = [
        [
            p["run"]["profile"],
            f"{p['run']['interval_ms']} ms",
            f"{p['rtt_ms']:g} ms",
            _num(p["run"]["bound_msg_s"]),
            _num(p["ideal_msg_s"]),
            _num(p["run"]["achieved_msg_s"]),
            _at_most(p["run"]) + _num(p["run"]["batch_ratio"], 3),
            _at_most(p["run"]) + _num(p["ideal_ratio"], 3),
            str(p["run"]["refused_sessions"]),
            _num(p["run"]["tcp_per_message"], 3),
            _num(p["run"]["timing"]["cycle_ms"]),
            f"{_num(p['run']['timing']['transaction_ms'])} ms",
            f"{_num(p['run']['timing']['gap_ms'])} ms",
        ]
        for p in points
    ]
    return _table(headers, rows)


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None with fewer than two distinct x."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return None
    mx = sum(xs) / len(xs)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def round_trips(points: Sequence[Row]) -> dict[tuple[str, int], dict[str, float | None]]:
    """Per client and interval, how many round trips each part of a message's cycle grows by
    per round trip of the network: the slopes of the medians over the RTTs."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for p in points:
        groups.setdefault((p["run"]["profile"], p["run"]["interval_ms"]), []).append(p)
    out = {}
    for key, group in groups.items():
        parts = {}
        for part in ("transaction_ms", "gap_ms", "outside_interval_ms"):
            samples = [(p["rtt_ms"], p["run"]["timing"][part]) for p in group]
            parts[part] = slope([(x, y) for x, y in samples if y is not None])
        out[key] = parts
    return out


def round_trips_table(points: Sequence[Row]) -> str:
    rows = [
        [client, f"{interval} ms", *(_num(v, 2) for v in parts.values())]
        for (client, interval), parts in round_trips(points).items()
    ]
    return _table(
        ["client", "interval", "MAIL FROM to end of DATA", "250 to next MAIL FROM",
         "per cycle outside the interval"],
        rows,
    )  # fmt: skip


def commands_line(results: Row) -> str:
    """What the relay sent, counted in its verbose log: the RSET per reused connection."""
    sent = results.get("commands_sent")
    if not sent:
        return ""
    counts = ", ".join(f"{name} {n}" for name, n in sorted(sent["commands"].items()))
    return (
        f"\nCommands the rendered relay sent for {sent['messages']} messages (its smtp log "
        f"with `debug_peer_list` covering the service, a run of its own): {counts}. Every "
        "message on a reused connection is preceded by an RSET that Postfix waits for before "
        "MAIL FROM.\n"
    )


def one_host_rates(runs: Sequence[Row]) -> dict[int, float]:
    """The achieved rate of a single relay, by interval: what N relays are compared with."""
    return {r["interval_ms"]: r["achieved_msg_s"] for r in runs if r["relays"] == 1}


def relays_table(runs: Sequence[Row]) -> str:
    one = one_host_rates(runs)
    headers = [
        "relays", "interval", "bound msg/s", "achieved msg/s", "achieved/bound",
        "achieved / (N x one relay)", "delivered", "peak sessions per sending IP",
        "refused sessions", "CPU busy",
    ]  # fmt: skip
    rows = [
        [
            str(r["relays"]),
            f"{r['interval_ms']} ms",
            _num(r["bound_msg_s"]),
            _num(r["achieved_msg_s"]),
            _num(r["ratio"], 3),
            _num(r["achieved_msg_s"] / (r["relays"] * one[r["interval_ms"]]), 3)
            if one.get(r["interval_ms"])
            else "-",
            f"{r['delivered']}/{r['messages']}",
            ", ".join(str(v) for v in r["peak_sessions_by_ip"].values()),
            str(r["refused_sessions"]),
            f"{100 * r['cpu_busy']:.0f}%",
        ]
        for r in runs
    ]
    return _table(headers, rows)


def soak_table(soaks: Sequence[Row]) -> str:
    return "\n".join(_soak_table(soak) for soak in soaks)


def _soak_table(soak: Row) -> str:
    a = soak["accounting"]
    rows = [
        ["messages", str(soak["messages"])],
        ["delivered exactly once (Message-ID and body hash)", f"{a['once']}/{a['expected']}"],
        ["duplicated / lost / damaged / unexpected",
         f"{a['duplicated']} / {a['lost']} / {a['damaged']} / {a['unexpected']}"],
        ["bounced", str(soak["bounces"])],
        ["refused sessions / deferred attempts",
         f"{soak['refused_sessions']} / {soak['deferrals']}"],
        ["outage", f"{soak['outage_s']:g} s, from {soak['outage_at_s']:.0f} s after the release"],
        ["Postfix stopped and started", f"{soak['restart_at_s']:.0f} s after the release"],
        ["drain time (release to last 250)", f"{soak['drain_s']:.0f} s"],
        ["drain bound (messages / bound + outage)", f"{soak['drain_bound_s']:.0f} s"],
        ["bound / drain time", _num(soak["drain_bound_s"] / soak["drain_s"], 3)
         if soak["drain_s"] else "-"],
        ["peak memory, Postfix's processes together: PSS (RSS summed)",
         f"{soak['postfix_peak_pss_mb']:.0f} MB ({soak['postfix_peak_rss_mb']:.0f} MB)"],
        ["peak RSS, the stand-in", f"{soak['standin_peak_rss_mb']:.0f} MB"],
    ]  # fmt: skip
    return _table([f"soak, {soak['stop']} stop and start", ""], rows)


def repeated(runs: Sequence[Row], profile: str) -> dict[int, list[Row]]:
    """A profile's runs by receiving interval, in run order."""
    out: dict[int, list[Row]] = {}
    for r in runs:
        if r["profile"] == profile:
            out.setdefault(r["interval_ms"], []).append(r)
    return out


def median_run(runs: Sequence[Row]) -> Row:
    """The run with the median achieved/bound (the lower middle of an even count)."""
    ordered = sorted(runs, key=lambda r: r["batch_ratio"])
    return ordered[(len(ordered) - 1) // 2]


def ceiling_by_interval(results: Row) -> dict[int, Row]:
    """The minimal client's median run at each receiving interval."""
    return {i: median_run(rs) for i, rs in repeated(results.get("ceiling", []), "direct").items()}


def _ratios(runs: Sequence[Row]) -> str:
    median = f"{median_run(runs)['batch_ratio']:.3f}"
    if len(runs) == 1:
        return median
    return f"median {median} of " + ", ".join(f"{r['batch_ratio']:.3f}" for r in runs)


def _in_runs(runs: Sequence[Row]) -> str:
    return "" if len(runs) == 1 else f" in {len(runs)} runs"


def verdicts(results: Row) -> list[tuple[str, bool]]:
    """The targets, checked on the rendered settings ("tuned"): achieved/bound on the median
    of the repeated runs, sessions on every run."""
    tuned = repeated(results.get("throughput", []), "tuned")
    recovery = [r for r in results.get("recovery", []) if r["profile"] == "tuned"]
    ceiling = repeated(results.get("ceiling", []), "direct")

    def context(interval: int) -> str:
        if interval not in ceiling:
            return ""
        return f"; a minimal client straight to the stand-in: {_ratios(ceiling[interval])}"

    checks = [
        (
            f"achieved/bound ≥ {TARGET_RATIO} at {interval} ms "
            f"({_ratios(runs)}{context(interval)})",
            median_run(runs)["batch_ratio"] >= TARGET_RATIO,
        )
        for interval, runs in tuned.items()
    ]
    for interval, runs in tuned.items():
        refused = sum(r["refused_sessions"] for r in runs)
        checks.append(
            (
                f"zero refused sessions at cap {runs[0]['session_cap']}, {interval} ms "
                f"({refused}{_in_runs(runs)})",
                refused == 0,
            )
        )
    for interval, runs in tuned.items():
        wire = max(r["peak_open_wire"] for r in runs)
        standin = max(r["peak_sessions_standin"] for r in runs)
        checks.append(
            (
                f"never more than {runs[0]['session_cap']} sessions at once, {interval} ms "
                f"(wire {wire}, stand-in {standin}{_in_runs(runs)})",
                max(wire, standin) <= runs[0]["session_cap"],
            )
        )
    checks += [
        (f"recovery within the bound, {r['scenario']}", bool(r["within_bound"])) for r in recovery
    ]
    for point in results.get("latency", []):
        if point["run"]["profile"] != "tuned":
            continue
        run = point["run"]
        checks.append(
            (
                f"achieved/ideal ≥ {TARGET_RATIO} at {run['interval_ms']} ms, RTT "
                f"{point['rtt_ms']:g} ms ({point['ideal_ratio']:.3f}; minimal client "
                f"{_latency_of(results, 'direct', run['interval_ms'], point['rtt_ms'])}), "
                f"{run['refused_sessions']} refused",
                point["ideal_ratio"] >= TARGET_RATIO and run["refused_sessions"] == 0,
            )
        )
    relays = results.get("relays", [])
    one = one_host_rates(relays)
    for r in relays:
        if r["relays"] == 1 or not one.get(r["interval_ms"]):
            continue
        scale = r["achieved_msg_s"] / (r["relays"] * one[r["interval_ms"]])
        checks.append(
            (
                f"{r['relays']} relays at {r['interval_ms']} ms: ≥ {TARGET_RATIO} x "
                f"{r['relays']} x one relay ({scale:.3f})",
                scale >= TARGET_RATIO,
            )
        )
    for r in relays:
        peak = max(r["peak_sessions_by_ip"].values(), default=0)
        checks.append(
            (
                f"{r['relays']} relays at {r['interval_ms']} ms: at most {p_cap(results)} "
                f"sessions per sending IP (peak {peak}), {r['refused_sessions']} refused",
                peak <= p_cap(results) and r["refused_sessions"] == 0,
            )
        )
    for soak in results.get("soak", []):
        a = soak["accounting"]
        checks.append(
            (
                f"soak, {soak['stop']} stop: {a['expected']} messages through an outage and a "
                f"Postfix stop and start, each delivered exactly once ({a['once']}; "
                f"{a['duplicated']} duplicated, {a['lost']} lost, {a['damaged']} damaged), "
                f"{soak['bounces']} bounced",
                a["once"] == a["expected"] == a["arrived"] and soak["bounces"] == 0,
            )
        )
    return checks


def p_cap(results: Row) -> int:
    return int(results["parameters"]["session_cap"])


def _latency_of(results: Row, client: str, interval: int, rtt: float) -> str:
    for point in results.get("latency", []):
        run = point["run"]
        if (run["profile"], run["interval_ms"], point["rtt_ms"]) == (client, interval, rtt):
            return f"{point['ideal_ratio']:.3f}"
    return "-"


def target_lines(results: Row) -> str:
    """The verdicts as a Markdown list."""
    return "".join(f"- {'PASS' if ok else 'FAIL'}: {text}\n" for text, ok in verdicts(results))


def machine_line(results: Row) -> str:
    m = results["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"])
    return (
        f"{m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, Postfix {m['postfix']}, "
        f"{m['dnsmasq']}, Python {m['python']}; load average at the start {load}"
    )


def results_markdown(results: Row) -> str:
    """The tables of one run (written next to its JSON)."""
    p = results["parameters"]
    sections = [
        f"# Benchmark run {results['started_at']}\n",
        f"Machine: {machine_line(results)}. Wall time {results['wall_s']:.0f} s.\n",
    ]
    if results.get("throughput"):
        sections.append(
            f"## Throughput\n\n{p['messages']} messages per run, stand-in session cap "
            f"{p['session_cap']} (= maxConnections).\n\n" + throughput_table(results["throughput"])
        )
    if results.get("ceiling"):
        sections.append(
            "## A minimal client straight to the stand-in\n\n"
            + throughput_table(results["ceiling"])
        )
    if results.get("ablation"):
        sections.append(
            f"## Each tuning knob's share ({p['ablation_interval_ms']} ms)\n\n"
            + throughput_table(results["ablation"])
        )
    if results.get("churn"):
        sections.append(
            "## Connection retirement (smtp_connection_reuse_time_limit = 1s)\n\n"
            + throughput_table(results["churn"])
        )
    if results.get("recovery"):
        sections.append("## Recovery\n\n" + recovery_table(results["recovery"]))
    if results.get("latency"):
        sections.append("## Latency\n\n" + latency_table(results["latency"]))
        sections.append("Round trips per RTT\n\n" + round_trips_table(results["latency"]))
    if results.get("relays"):
        sections.append("## Several sending IPs\n\n" + relays_table(results["relays"]))
    if results.get("soak"):
        sections.append("## Soak\n\n" + soak_table(results["soak"]))
    if results.get("throughput"):
        sections.append("## DNS\n\n" + dns_tables(results))
    sections.append("## Targets (rendered settings)\n\n" + target_lines(results))
    if results.get("failures"):
        sections.append(failures_section(results))
    return "\n".join(sections)


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


# Why each tuning knob is there (main.cf.j2 says the same in its comments).
KNOB_WHY: Final = {
    "smtp_tls_connection_reuse": "reuse TLS connections (via tlsproxy) instead of one "
    "TCP+TLS+AUTH handshake per message, so no connection closes right before the next opens",
    "smtp_connection_cache_destinations": "cache connections to the service always, not only "
    "once Postfix has seen back-to-back deliveries: with on-demand caching the first deliveries "
    "each use a connection of their own and close it just before the next opens (TCP per "
    "message doubles here; such a close can get the next session refused)",
    "smtp_initial_destination_concurrency": "open all maxConnections sessions at once instead "
    "of ramping up from 5",
    "smtp_skip_quit_response": "wait for the reply to QUIT when a connection is retired "
    "before the next delivery opens a new one: without it the old connection may still be "
    "closing (through tlsproxy), so more than maxConnections can be open on the wire, and the "
    "service refuses more sessions (see the peak on the wire and the totals below)",
}


def timing_table(runs: Sequence[Row]) -> str:
    headers = [
        "profile", "interval", "per message per session", "receiving interval as taken",
        "MAIL FROM to end of DATA", "250 to next MAIL FROM (relay)",
        "outside the interval per cycle (fastest tenth)", "first MAIL FROM after release",
    ]  # fmt: skip
    rows = [
        [
            r["profile"],
            f"{r['interval_ms']} ms",
            f"{_num(r['timing']['cycle_ms'])} ms",
            f"{_num(r['interval_ms'] + r['timing']['interval_overshoot_ms'])} ms",
            f"{_num(r['timing']['transaction_ms'])} ms",
            f"{_num(r['timing']['gap_ms'])} ms",
            f"{_num(r['timing']['outside_interval_ms'], 2)} ms "
            f"({_num(r['timing']['outside_interval_p10_ms'], 2)} ms)",
            f"{_num(1000 * r['first_delivery_s'], 0)} ms",
        ]
        for r in runs
    ]
    return _table(headers, rows)


def _dns_cost(results: Row) -> str:
    latency = results.get("dns_latency")
    tuned = [r for r in results.get("throughput", []) if r["profile"] == "tuned"]
    if not latency or not tuned:
        return ""
    lookups = tuned[0]["dns_lookups_per_1000"] / 1000
    direct = lookups * latency["direct"]["p50_ms"]
    cached = lookups * latency["cache_hit"]["p50_ms"]
    return (
        f"\nPostfix looks the service's name up {lookups:.1f} times per message (A and AAAA, "
        "before it reuses a cached connection). With an upstream resolver "
        f"{latency['upstream_delay_ms']:g} ms away that costs about {direct:.1f} ms per message "
        f"and session without the cache and {cached:.2f} ms with it (derived from the medians "
        "above, not measured as throughput).\n"
    )


def churn_totals(runs: Sequence[Row]) -> str:
    totals: dict[str, list[int]] = {}
    for r in runs:
        totals.setdefault(r["profile"], []).append(r["refused_sessions"])
    parts = [f"{name} {sum(v)} in {len(v)} runs" for name, v in totals.items()]
    return "\nRefused sessions in total: " + "; ".join(parts) + ".\n" if parts else ""


def _shortfall(run: Row, ceiling: Row | None) -> str:
    """Where a run below the target ratio lost it: in every cycle (the time each message needs
    outside the receiving interval against what the target leaves), or at the batch's edges."""
    budget = outside_interval_budget_ms(run["interval_ms"], TARGET_RATIO)
    t = run["timing"]
    text = (
        f"{TARGET_RATIO} of the bound leaves {budget:.2f} ms per message outside the receiving "
        f"interval; the relay's cycles needed {t['outside_interval_ms']:.2f} ms (fastest tenth "
        f"{t['outside_interval_p10_ms']:.2f} ms)"
    )
    if t["outside_interval_p10_ms"] <= budget:
        return text + (
            f": within it, so the shortfall is the batch's start and end (steady state "
            f"{run['steady_ratio']:.3f})."
        )
    text += ": out of reach per message here"
    if ceiling is not None and ceiling["timing"]["outside_interval_p10_ms"] is not None:
        c = ceiling["timing"]
        text += (
            f", as for the minimal client ({c['outside_interval_ms']:.2f} ms, fastest tenth "
            f"{c['outside_interval_p10_ms']:.2f} ms)"
        )
    return text + "."


def findings(results: Row) -> list[str]:
    """What the tables say, in sentences computed from them."""
    runs = results.get("throughput", [])
    by_profile = {name: [r for r in runs if r["profile"] == name] for name in results["profiles"]}
    ceiling = ceiling_by_interval(results)
    out = []
    if guide := by_profile.get("guide"):
        refused = [r["refused_sessions"] for r in guide]
        attempts = sum(r["connections_wire"] for r in guide)
        out.append(
            f"The guide's settings alone: {guide[0]['tls_per_message']:.2f} TLS handshakes per "
            f"message; the service refused {min(refused)}-{max(refused)} sessions per run "
            f"({100 * sum(refused) / max(1, attempts):.0f}% of connection attempts) though never "
            f"more than {max(r['peak_open_wire'] for r in guide)} were open on the wire."
        )
    if stock := by_profile.get("stock"):
        out.append(
            "Postfix's stock settings: up to "
            f"{max(r['peak_open_wire'] for r in stock)} connections open at once, "
            f"{min(r['refused_sessions'] for r in stock)}-"
            f"{max(r['refused_sessions'] for r in stock)} sessions refused per run, and "
            f"{min(r['left_in_queue'] for r in stock)}-{max(r['left_in_queue'] for r in stock)} "
            f"of {stock[0]['messages']} messages left deferred for minutes."
        )
    for interval, tuned in repeated(runs, "tuned").items():
        r = median_run(tuned)
        which = "" if len(tuned) == 1 else f" (the median of {len(tuned)} runs)"
        line = (
            f"Rendered settings, {interval} ms{which}: {r['connections_wire']} connections for "
            f"{r['delivered']} messages, {r['refused_sessions']} refused, at most "
            f"{max(r['peak_open_wire'], r['peak_sessions_standin'])} open; "
            f"{r['batch_ratio']:.3f} of the bound."
        )
        t = r["timing"]
        if t["gap_ms"] is not None:  # some session delivered more than one message
            taken = r["interval_ms"] + t["interval_overshoot_ms"]
            rest = t["cycle_ms"] - taken - t["transaction_ms"] - t["gap_ms"]
            line += (
                f" Each session spent {t['cycle_ms']:.1f} ms per message: {taken:.1f} in the "
                f"receiving interval as the stand-in took it, {t['transaction_ms']:.1f} from MAIL "
                f"FROM to the end of DATA, {t['gap_ms']:.1f} from the 250 to the next MAIL FROM "
                "(the relay's own turn-around: status to the queue manager, the connection cache, "
                "DNS, and the RSET with which Postfix checks every reused connection); the other"
                f" {rest:.1f} come from the start "
                f"({1000 * r['first_delivery_s']:.0f} ms to the first MAIL FROM) and the uneven "
                "end of the batch (medians, not means)."
            )
        if r["interval_ms"] in ceiling:
            c = ceiling[r["interval_ms"]]["batch_ratio"]
            line += f" A minimal client straight to the stand-in reached {c:.3f}{which}."
        if r["batch_ratio"] < TARGET_RATIO and t["outside_interval_p10_ms"] is not None:
            line += " " + _shortfall(r, ceiling.get(r["interval_ms"]))
        out.append(line)
    out += latency_findings(results.get("latency", []))
    out += relays_findings(results.get("relays", []))
    out += [soak_finding(soak) for soak in results.get("soak", [])]
    return out


def rset_cost(interval_ms: float, rtt_ms: float) -> float:
    """The ideal client's rate with one more round trip per message (Postfix's RSET on a
    reused connection), as a share of the ideal."""
    return (interval_ms + 2 * rtt_ms) / (interval_ms + 3 * rtt_ms)


def latency_findings(points: Sequence[Row]) -> list[str]:
    out = []
    trips = round_trips(points)
    rtts = sorted({p["rtt_ms"] for p in points})
    for (client, interval), parts in trips.items():
        if client != "tuned" or parts["outside_interval_ms"] is None:
            continue
        mine = {p["rtt_ms"]: p for p in points if p["run"]["profile"] == client
                and p["run"]["interval_ms"] == interval}  # fmt: skip
        direct = {p["rtt_ms"]: p for p in points if p["run"]["profile"] == "direct"
                  and p["run"]["interval_ms"] == interval}  # fmt: skip
        top = rtts[-1]
        line = (
            f"Rendered settings over a network, {interval} ms: each RTT adds "
            f"{parts['outside_interval_ms']:.2f} round trips to a message's cycle (the ideal "
            f"client: 2), {_num(parts['transaction_ms'], 2)} from MAIL FROM to the end of DATA "
            f"(the pipelined envelope, then the message) and {_num(parts['gap_ms'], 2)} from "
            "the 250 to the next MAIL FROM, where Postfix first sends RSET on the reused "
            'connection and waits for its reply (postconf(5), smtp_rset_timeout: "to verify '
            'that a cached session is still usable"; no parameter turns it off). Achieved/ideal '
            + ", ".join(f"{mine[r]['ideal_ratio']:.3f} at {r:g} ms" for r in rtts if r in mine)
        )
        if direct:
            line += (
                " (minimal client: "
                + ", ".join(f"{direct[r]['ideal_ratio']:.3f}" for r in rtts if r in direct)
                + ")"
            )
        line += (
            f". That one round trip alone caps the relay at {rset_cost(interval, top):.3f} of "
            f"the ideal at {top:g} ms."
        )
        out.append(line)
    guide = [p["run"] for p in points if p["run"]["profile"] == "guide"]
    if guide:
        refused = [r["refused_sessions"] for r in guide]
        cut = sum(bool(r.get("cut_off")) for r in guide)
        out.append(
            "The guide's settings over a network: a new TCP+TLS+AUTH connection for every "
            f"message ({min(r['tcp_per_message'] for r in guide):.1f}-"
            f"{max(r['tcp_per_message'] for r in guide):.1f} connections per message with the "
            f"retries), {min(refused)}-{max(refused)} sessions refused per run, and Postfix "
            "suspending delivery to the service after the refusals; "
            f"{cut} of {len(guide)} runs were cut off at their time limit. A closed session "
            "leaves the service's count only when the relay's FIN has crossed the link, so "
            "every round trip lengthens the overlap; through the proxy even RTT 0 adds its "
            "thread hops to each close (compare the refusals straight to the stand-in, in "
            "Throughput). The rendered settings keep their 10 connections open and meet no "
            "refusal at any RTT."
        )
    return out


def relays_findings(runs: Sequence[Row]) -> list[str]:
    one = one_host_rates(runs)
    out = []
    for interval in dict.fromkeys(r["interval_ms"] for r in runs):
        mine = [r for r in runs if r["interval_ms"] == interval]
        if not one.get(interval):
            continue
        parts = [
            f"{r['relays']} relays {r['achieved_msg_s']:.1f} msg/s = "
            f"{r['achieved_msg_s'] / (r['relays'] * one[interval]):.3f} x {r['relays']} x one "
            f"(peak {max(r['peak_sessions_by_ip'].values(), default=0)} sessions per IP, "
            f"CPU {100 * r['cpu_busy']:.0f}% busy)"
            for r in mine
        ]
        out.append(
            f"Several sending IPs, {interval} ms: one relay {one[interval]:.1f} msg/s; "
            + "; ".join(parts[1:] if len(parts) > 1 else parts)
            + "."
        )
    return out


def soak_finding(soak: Row) -> str:
    a = soak["accounting"]
    text = (
        f"Soak ({soak['stop']} stop and start): {a['once']} of {a['expected']} messages "
        f"arrived exactly once, {a['duplicated']} twice or more, {a['lost']} lost, "
        f"{soak['bounces']} bounced; drained in {soak['drain_s']:.0f} s against a bound of "
        f"{soak['drain_bound_s']:.0f} s; Postfix's processes peaked at "
        f"{soak['postfix_peak_pss_mb']:.0f} MB PSS."
    )
    if a["duplicated"] and soak["stop"] == "plain":
        text += (
            " The duplicates are the deliveries under way when `postfix stop` ended their smtp "
            "processes: the service accepted each message, the relay never read the 250, and "
            "retried after the start (SMTP's known duplicate window); the graceful stop avoids "
            "it."
        )
    return text


def report_markdown(results: Row) -> str:
    """The committed report: method, targets, the chart, every table, and how to rerun."""
    p = results["parameters"]
    profiles = results["profiles"]
    out = [
        "# Relay benchmarks\n",
        f"Generated by `python -m benchmarks` from the run of {results['started_at']} "
        f"({results['wall_s']:.0f} s). Machine: {machine_line(results)}. One run on one "
        "machine: rerun to compare; `benchmarks/results/` keeps each run's JSON.\n",
        "## Method\n",
        "Every run uses the integration rig (`simworld/netns_rig.py`): real Postfix with the "
        "rendered debian-12 `main.cf` and `master.cf` services, TLS and SMTP AUTH on, the rendered "
        "dnsmasq cache, in network namespaces, relaying to the stand-in for the service "
        f"(`simworld/standin`) at three round-robin addresses, with a session cap of "
        f"{p['session_cap']} per client IP (= maxConnections) and a receiving interval. The "
        "stand-in announces PIPELINING, as Postfix's smtpd and most MTAs do (the service's EHLO "
        "reply is not documented), and sends its 250 one receiving interval after the final "
        "dot, timed by a thread (asyncio's timers can fire a millisecond late).\n",
        f"- **Throughput**: {p['messages']} messages are submitted over SMTP and held, then "
        "released at once (`postsuper -H`, `postqueue -f`): the relay drains a backlog. "
        "The window runs from the release to the service's 250 for the last message; the bound "
        "is sessions x 1000 / interval. *Steady state* is the rate between the 10th and 90th "
        "percentile of deliveries. Sessions are counted by the stand-in (until it has processed "
        "the client's FIN) and on the wire (client SYN to FIN, `wire_tap.py`). A run ends when "
        "everything is delivered or the rest waits for an attempt more than a minute away.",
        f"- **Recovery**: one message failed {p['failures']} times in a row (451 at end of DATA, "
        f"or a 421 greeting), and {p['outage_messages']} messages sent during a "
        f"{p['outage_s']:g} s outage: time from the service working again to the last delivery, "
        "against `maximal_backoff_time + queue_run_delay`. Where Postfix scheduled nothing "
        "within a minute the run stops and reports the scheduled attempt (queue file times).",
        "- **DNS**: lookups per 1000 messages from the cache's and the upstream's query logs "
        "during the throughput runs; lookup latency from the relay namespace through the cache "
        f"and straight to an upstream resolver {p['dns_delay_ms']:g} ms away (a delaying "
        "forwarder: the kernel here has no netem).",
        "- **Latency**, **several sending IPs**, **soak**: see their sections.",
        "- **Profiles**: "
        + "; ".join(f"*{name}*: {v['title']}" for name, v in profiles.items())
        + ".\n",
        "## Targets (rendered settings)\n",
        target_lines(results),
        "![achieved/bound and refused sessions per receiving interval](throughput.png)\n",
        "## Findings\n",
        "".join(f"- {line}\n" for line in findings(results)),
    ]
    if results.get("failures"):
        out.append(failures_section(results))
    if results.get("throughput"):
        out += [
            "## Throughput\n",
            throughput_table(results["throughput"]),
            "Where the time per message goes (medians, as the stand-in saw them):\n",
            timing_table(results["throughput"] + results.get("ceiling", [])),
        ]
    if results.get("ceiling"):
        out += [
            "What this rig lets any client reach: a minimal client (`direct_client.py`: Python "
            "smtplib, one persistent STARTTLS+AUTH connection per session, no relay) sends the "
            "same messages straight to the stand-in. The stand-in is Python too; on few CPUs "
            "its own per-command work is part of every cycle.\n",
            throughput_table(results["ceiling"]),
        ]
    if results.get("ablation") or results.get("churn"):
        out += ["## The tuning, knob by knob\n"]
        out += ["".join(f"- `{knob}`: {why}.\n" for knob, why in KNOB_WHY.items())]
        out += [
            f"\nEach knob left out in turn, {p['ablation_interval_ms']} ms:\n",
            throughput_table(results.get("ablation", [])),
            "\nAchieved/bound varies by about ±0.015 from run to run on this machine: what the "
            "knobs are for shows in the refused sessions and the connections per message.\n",
            "\nA connection is retired after `smtp_connection_reuse_time_limit` (300 s): the "
            "next delivery opens a new one while the service may still count the old. Runs are "
            "shorter than that, so here connections are retired every second to show what a "
            f"long run meets now and then ({p.get('churn_messages', p['messages'])} messages "
            "per run):\n",
            throughput_table(results.get("churn", [])),
            churn_totals(results.get("churn", [])),
        ]
    if results.get("recovery"):
        out += ["## Recovery\n", recovery_table(results["recovery"])]
    if results.get("latency"):
        out += [
            "## Latency\n",
            f"{p['latency_messages']} messages per run, through `simworld/delay_proxy.py`, which "
            "delays every byte by half the round trip in each direction (this kernel has no "
            "netem); RTT 0 goes through the same proxy, so its cost is in every row. The ideal "
            "client needs the receiving interval plus two round trips per message and session "
            "(the pipelined envelope up to the 354, then the message up to its 250): "
            "sessions x 1000 / (interval + 2 x RTT).\n",
            latency_table(results["latency"]),
            "\nWhere the round trips go: the slope of each median over the RTTs, in round trips "
            "per round trip (the ideal client: 1 from MAIL FROM to the end of DATA, 1 from the "
            "250 to the next MAIL FROM, 2 per cycle):\n",
            round_trips_table(results["latency"]),
            commands_line(results),
        ]
    if results.get("relays"):
        out += [
            "## Several sending IPs\n",
            f"{p['relay_messages']} messages held on each relay (one namespace, Postfix, "
            "dnsmasq and sending address per relay), released at once to one stand-in whose "
            f"cap ({p['session_cap']}) is per sending IP; CPU busy is the machine's "
            f"({results['machine']['nproc']} CPUs) from the release to the end.\n",
            relays_table(results["relays"]),
        ]
    if results.get("soak"):
        out += [
            "## Soak\n",
            f"{p['soak_messages']} messages held, then released at a "
            f"{p['soak_interval_ms']} ms receiving interval; a third of the way through the "
            f"service goes down for {p['soak_outage_s']:g} s, two thirds of the way Postfix is "
            "stopped and started: *plain*, `postfix stop` then `postfix start`; *graceful*, "
            "`defer_transports = smtp` and a reload first (deliveries under way finish, no new "
            "ones start), a few seconds' wait, the stop, and after the start the deferred rest "
            "flushed. Each message is checked at the stand-in by Message-ID and body hash; "
            "memory is sampled every half second.\n",
            soak_table(results["soak"]),
        ]
    if results.get("throughput"):
        out += ["## DNS\n", dns_tables(results), _dns_cost(results)]
    out += [
        "## Rerun\n",
        "```sh\nsudo .venv/bin/python -m benchmarks          # everything: "
        f"{results['wall_s'] / 60:.0f} min on {results['machine']['nproc']} CPUs\n"
        "sudo .venv/bin/python -m benchmarks --help   # smaller runs, --render to redo this\n"
        "```\n",
    ]
    return "\n".join(out)
