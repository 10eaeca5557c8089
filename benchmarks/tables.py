"""The results document's rows as Markdown tables, and the summaries of rows the verdicts and
the chart share (repeated runs and their median, slopes over the RTT, one relay's rate). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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
            num(r["bound_msg_s"]),
            num(r["achieved_msg_s"]),
            _at_most(r) + num(r["batch_ratio"], 3),
            num(r["steady_ratio"], 3),
            _delivered(r),
            str(r["refused_sessions"]),
            f"{r['peak_sessions_standin']} / {r['peak_open_wire']}",
            f"{num(r['tcp_per_message'], 3)} / {num(r['tls_per_message'], 3)}",
            num(r["auth_per_message"], 3),
            str(r["deferrals"]),
            f"{num(r['timing']['cycle_ms'])} ({num(r['timing']['gap_ms'])})",
        ]
        for r in runs
    ]
    return markdown_table(headers, rows)


def recovery_table(runs: Sequence[Row]) -> str:
    def outcome(r: Row) -> str:
        if r["recovered_s"] is not None:
            return f"{r['recovered_s']:.1f} s"
        return f"not waited for: next attempt {num(r['next_attempt_s'], 0)} s later"

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
    return markdown_table(headers, rows)


def dns_tables(results: Row) -> str:
    throughput_rows = [
        [
            r["profile"],
            f"{r['interval_ms']} ms",
            num(r["dns_lookups_per_1000"], 0),
            num(r["upstream_queries_per_1000"], 1),
        ]
        for r in results["throughput"]
    ]
    out = markdown_table(
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
                num(v["p50_ms"], 2),
                num(v["p95_ms"], 2),
                num(v["max_ms"], 2),
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
        out += markdown_table(["lookup", "n", "p50 ms", "p95 ms", "max ms"], rows)
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
            num(p["run"]["bound_msg_s"]),
            num(p["ideal_msg_s"]),
            num(p["run"]["achieved_msg_s"]),
            _at_most(p["run"]) + num(p["run"]["batch_ratio"], 3),
            _at_most(p["run"]) + num(p["ideal_ratio"], 3),
            str(p["run"]["refused_sessions"]),
            num(p["run"]["tcp_per_message"], 3),
            num(p["run"]["timing"]["cycle_ms"]),
            f"{num(p['run']['timing']['transaction_ms'])} ms",
            f"{num(p['run']['timing']['gap_ms'])} ms",
        ]
        for p in points
    ]
    return markdown_table(headers, rows)


def round_trips_table(points: Sequence[Row]) -> str:
    rows = [
        [client, f"{interval} ms", *(num(v, 2) for v in parts.values())]
        for (client, interval), parts in round_trips(points).items()
    ]
    return markdown_table(
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
            num(r["bound_msg_s"]),
            num(r["achieved_msg_s"]),
            num(r["ratio"], 3),
            num(r["achieved_msg_s"] / (r["relays"] * one[r["interval_ms"]]), 3)
            if one.get(r["interval_ms"])
            else "-",
            f"{r['delivered']}/{r['messages']}",
            ", ".join(str(v) for v in r["peak_sessions_by_ip"].values()),
            str(r["refused_sessions"]),
            f"{100 * r['cpu_busy']:.0f}%",
        ]
        for r in runs
    ]
    return markdown_table(headers, rows)


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
        ["bound / drain time", num(soak["drain_bound_s"] / soak["drain_s"], 3)
         if soak["drain_s"] else "-"],
        ["peak memory, Postfix's processes together: PSS (RSS summed)",
         f"{soak['postfix_peak_pss_mb']:.0f} MB ({soak['postfix_peak_rss_mb']:.0f} MB)"],
        ["peak RSS, the stand-in", f"{soak['standin_peak_rss_mb']:.0f} MB"],
    ]  # fmt: skip
    return markdown_table([f"soak, {soak['stop']} stop and start", ""], rows)


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
            f"{num(r['timing']['cycle_ms'])} ms",
            f"{num(r['interval_ms'] + r['timing']['interval_overshoot_ms'])} ms",
            f"{num(r['timing']['transaction_ms'])} ms",
            f"{num(r['timing']['gap_ms'])} ms",
            f"{num(r['timing']['outside_interval_ms'], 2)} ms "
            f"({num(r['timing']['outside_interval_p10_ms'], 2)} ms)",
            f"{num(1000 * r['first_delivery_s'], 0)} ms",
        ]
        for r in runs
    ]
    return markdown_table(headers, rows)


def churn_totals(runs: Sequence[Row]) -> str:
    totals: dict[str, list[int]] = {}
    for r in runs:
        totals.setdefault(r["profile"], []).append(r["refused_sessions"])
    parts = [f"{name} {sum(v)} in {len(v)} runs" for name, v in totals.items()]
    return "\nRefused sessions in total: " + "; ".join(parts) + ".\n" if parts else ""


def machine_line(results: Row) -> str:
    m = results["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"])
    return (
        f"{m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, Postfix {m['postfix']}, "
        f"{m['dnsmasq']}, Python {m['python']}; load average at the start {load}"
    )


def dns_cost(results: Row) -> str:
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


def one_host_rates(runs: Sequence[Row]) -> dict[int, float]:
    """The achieved rate of a single relay, by interval: what N relays are compared with."""
    return {r["interval_ms"]: r["achieved_msg_s"] for r in runs if r["relays"] == 1}


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
