"""The targets checked against the results (``verdicts``) and what the tables say in sentences
(``findings``). Pure."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.bounds import outside_interval_budget_ms
from benchmarks.tables import (
    Row,
    ceiling_by_interval,
    median_run,
    num,
    one_host_rates,
    repeated,
    round_trips,
)

TARGET_RATIO = 0.95


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
            f"client: 2), {num(parts['transaction_ms'], 2)} from MAIL FROM to the end of DATA "
            f"(the pipelined envelope, then the message) and {num(parts['gap_ms'], 2)} from "
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
