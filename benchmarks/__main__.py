"""python -m benchmarks: relay throughput, retry recovery and DNS cost against their bounds.

Runs on the integration rig (root, network namespaces; see simworld/netns_rig.py). Writes
``results/<time>.json`` and ``.md`` (plus each rig's logs under ``results/<time>/``), and the
report ``REPORT.md`` with its chart ``throughput.png`` to ``--report-dir``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

from benchmarks import chart, report, scenarios
from benchmarks.machine import machine
from benchmarks.measure import as_json
from benchmarks.profiles import PROFILES, TUNED, TUNING, Profile, check_profiles, without
from simworld.netns_rig import (
    RELAY_IPS,
    missing_requirements,
    netns_etc,
    relay_settings,
    secrets_service,
)

T = TypeVar("T")
HERE: Final = Path(__file__).resolve().parent
SECTIONS: Final = (
    "throughput", "ceiling", "ablation", "churn", "recovery", "dns", "latency", "relays", "soak",
)  # fmt: skip
# The latency matrix's clients: the rendered settings, the guide's, the rig's minimal client.
LATENCY_CLIENTS: Final = ("tuned", "guide", "direct")
SOAK_STOPS: Final = ("plain", "graceful")
# Retiring connections every second packs a long run's worth of reconnections into seconds.
CHURN: Final = {"smtp_connection_reuse_time_limit": "1s"}
# Recovery runs wait on Postfix's timers, not on the CPU: they run side by side.
PARALLEL_RECOVERIES: Final = 6


def _csv(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    return lambda text: [kind(item) for item in text.split(",") if item]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--messages", type=int, default=500, help="per throughput run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of the rendered settings and of the minimal client per interval; the "
        "targets are checked on their median (achieved/bound varies by about ±0.015)",
    )
    parser.add_argument("--intervals", type=_csv(int), default=[50, 200, 1000], help="ms")
    parser.add_argument("--profiles", type=_csv(str), default=list(PROFILES))
    parser.add_argument("--sections", type=_csv(str), default=list(SECTIONS))
    parser.add_argument("--ablation-interval", type=int, default=200, help="ms")
    parser.add_argument("--churn-runs", type=int, default=3, help="of each churn profile")
    parser.add_argument("--churn-messages", type=int, default=300, help="per churn run")
    parser.add_argument("--failures", type=int, default=3, help="temporary failures in a row")
    parser.add_argument("--outage-seconds", type=float, default=30)
    parser.add_argument("--outage-messages", type=int, default=50)
    parser.add_argument("--dns-delay-ms", type=float, default=10)
    parser.add_argument("--dns-rounds", type=int, default=6)
    parser.add_argument("--rtts", type=_csv(float), default=[0, 2, 10, 30], help="ms")
    parser.add_argument("--latency-messages", type=int, default=200, help="per latency run")
    parser.add_argument(
        "--latency-time-limit",
        type=float,
        default=90,
        help="s; a relay still retrying then is cut off (the guide's settings back off)",
    )
    parser.add_argument(
        "--latency-clients", type=_csv(str), default=list(LATENCY_CLIENTS), help="profiles, direct"
    )
    parser.add_argument("--relays", type=_csv(int), default=[1, 2, 3], help="relay hosts at once")
    parser.add_argument("--relay-intervals", type=_csv(int), default=[200, 1000], help="ms")
    parser.add_argument("--relay-messages", type=int, default=300, help="per relay and run")
    parser.add_argument("--soak-messages", type=int, default=20_000)
    parser.add_argument("--soak-interval", type=int, default=50, help="ms")
    parser.add_argument("--soak-outage-seconds", type=float, default=30)
    parser.add_argument(
        "--soak-stops",
        type=_csv(str),
        default=list(SOAK_STOPS),
        help="how Postfix is stopped mid-soak, one soak each: plain (postfix stop), graceful",
    )
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--report-dir", type=Path, default=HERE)
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only write the report from a run's results"
    )
    args = parser.parse_args(argv)
    for name in args.profiles:
        if name not in PROFILES:
            parser.error(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    for name in args.sections:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
    for name in args.latency_clients:
        if name not in (*PROFILES, "direct"):
            parser.error(f"unknown latency client {name!r}; known: {', '.join(LATENCY_CLIENTS)}")
    if not set(args.soak_stops) <= set(SOAK_STOPS):
        parser.error(f"--soak-stops: from {', '.join(SOAK_STOPS)}")
    if not all(1 <= n <= len(RELAY_IPS) for n in args.relays):
        parser.error(f"--relays: 1 to {len(RELAY_IPS)}")
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    return args


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)


def run_all(
    bench: scenarios.Bench,
    args: argparse.Namespace,
    say: Progress,
    checkpoint: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Every section asked for; ``checkpoint`` gets the results so far after each section, and
    a run that fails is reported under ``failures`` while the others go on."""
    profiles = [PROFILES[name] for name in args.profiles]
    results: dict[str, Any] = {"failures": []}

    def attempt(what: str, job: Callable[[], T]) -> T | None:
        try:
            return job()
        except Exception as error:  # one run's failure must not lose the others' results
            say(f"{what}: FAILED: {error!r}")
            results["failures"].append({"run": what, "error": repr(error)})
            return None

    def throughput_runs(runs: Sequence[tuple[Profile, int]], messages: int) -> list[Any]:
        out = []
        for profile, interval in runs:
            what = f"throughput {profile.name} {interval} ms"
            r = attempt(what, partial(scenarios.throughput, bench, profile, interval, messages))
            if r is None:
                continue
            say(
                f"{what}: {r.achieved_msg_s:.1f} msg/s ({r.batch_ratio:.3f} of "
                f"{r.bound_msg_s:g}), {r.delivered} delivered, {r.refused_sessions} sessions "
                "refused"
            )
            out.append(r)
        return out

    def repeats(profile: Profile) -> int:
        return args.repeats if profile is TUNED else 1

    if "throughput" in args.sections:
        runs = [(p, i) for p in profiles for i in args.intervals for _ in range(repeats(p))]
        results["throughput"] = throughput_runs(runs, args.messages)
        checkpoint(results)
    if "ceiling" in args.sections:
        results["ceiling"] = []
        for interval in args.intervals:
            for _ in range(args.repeats):
                what = f"ceiling {interval} ms"
                r = attempt(what, partial(scenarios.direct, bench, interval, args.messages))
                if r is not None:
                    say(f"{what}: a minimal client reaches {r.batch_ratio:.3f}")
                    results["ceiling"].append(r)
        checkpoint(results)
    if "ablation" in args.sections:
        knobs = [k for k in TUNING if k != "smtp_skip_quit_response"]  # matters in churn only
        results["ablation"] = throughput_runs(
            [(TUNED, args.ablation_interval)]
            + [(without(k), args.ablation_interval) for k in knobs],
            args.messages,
        )
        checkpoint(results)
    if "churn" in args.sections:
        churn = [
            Profile("churn", "as rendered, connections retired every second", CHURN),
            Profile(
                "churn-smtp_skip_quit_response",
                "as rendered without smtp_skip_quit_response, connections retired every second",
                {**CHURN, "smtp_skip_quit_response": None},
            ),
        ]
        # Refusals at retirement vary a lot from run to run: alternate the two, several times.
        results["churn"] = throughput_runs(
            [(p, args.ablation_interval) for _ in range(args.churn_runs) for p in churn],
            args.churn_messages,
        )
        checkpoint(results)
    if "recovery" in args.sections:
        jobs: list[tuple[str, Callable[[], Any]]] = []
        for profile in profiles:
            jobs += [
                (
                    f"recovery {profile.name} 451x{args.failures}",
                    partial(scenarios.temporary_failures, bench, profile, "451", args.failures),
                ),
                (
                    f"recovery {profile.name} 421x{args.failures}",
                    partial(scenarios.temporary_failures, bench, profile, "421", args.failures),
                ),
                (
                    f"recovery {profile.name} outage",
                    partial(
                        scenarios.outage, bench, profile, args.outage_messages, args.outage_seconds
                    ),
                ),
            ]
        with ThreadPoolExecutor(PARALLEL_RECOVERIES) as pool:
            done = list(pool.map(lambda job: attempt(*job), jobs))
        results["recovery"] = [r for r in done if r is not None]
        for r in results["recovery"]:
            say(f"recovery {r.profile} {r.scenario}: {r.recovered_s} s (bound {r.bound_s} s)")
        checkpoint(results)
    if "dns" in args.sections:
        latency = attempt(
            "dns",
            partial(scenarios.dns_latency, bench, args.dns_delay_ms, args.dns_rounds, 20),
        )
        if latency is not None:
            results["dns_latency"] = latency
            say(
                f"dns: cache hit p50 {latency.cache_hit.p50_ms:.2f} ms, miss p50 "
                f"{latency.cache_miss.p50_ms:.2f} ms, direct p50 {latency.direct.p50_ms:.2f} ms"
            )
        checkpoint(results)
    if "latency" in args.sections:
        sent = attempt("commands", partial(scenarios.commands_sent, bench, args.latency_messages))
        if sent is not None:
            say(f"commands the relay sent for {args.latency_messages} messages: {sent}")
            results["commands_sent"] = {"messages": args.latency_messages, "commands": sent}
        results["latency"] = []
        for rtt in args.rtts:
            for interval in args.intervals:
                for client in args.latency_clients:
                    what = f"latency {client} {interval} ms RTT {rtt:g} ms"
                    point = attempt(
                        what,
                        partial(
                            scenarios.latency,
                            bench,
                            client,
                            interval,
                            rtt,
                            args.latency_messages,
                            args.latency_time_limit,
                        ),
                    )
                    if point is None:
                        continue
                    say(
                        f"{what}: {point.run.batch_ratio:.3f} of the bound, "
                        f"{point.ideal_ratio:.3f} of the ideal, {point.run.refused_sessions} "
                        f"refused{' (cut off)' if point.run.cut_off else ''}"
                    )
                    results["latency"].append(point)
            checkpoint(results)
    if "relays" in args.sections:
        results["relays"] = []
        for interval in args.relay_intervals:
            for count in args.relays:
                what = f"relays {count} at {interval} ms"
                m = attempt(
                    what,
                    partial(
                        scenarios.multi_relay, bench, TUNED, count, interval, args.relay_messages
                    ),
                )
                if m is None:
                    continue
                say(
                    f"{what}: {m.achieved_msg_s:.1f} msg/s ({m.ratio:.3f} of "
                    f"{m.bound_msg_s:g}), peaks {m.peak_sessions_by_ip}, CPU {m.cpu_busy:.2f}"
                )
                results["relays"].append(m)
        checkpoint(results)
    if "soak" in args.sections:
        results["soak"] = []
        for stop in args.soak_stops:
            soak = attempt(
                f"soak, {stop} stop",
                partial(
                    scenarios.soak,
                    bench,
                    TUNED,
                    args.soak_messages,
                    args.soak_interval,
                    args.soak_outage_seconds,
                    stop,
                ),
            )
            if soak is None:
                continue
            a = soak.accounting
            say(
                f"soak, {stop} stop: {a.once}/{a.expected} exactly once, {a.duplicated} "
                f"duplicated, {a.lost} lost, {soak.bounces} bounced; drained in "
                f"{soak.drain_s:.0f} s (bound {soak.drain_bound_s:.0f} s), Postfix peak PSS "
                f"{soak.postfix_peak_pss_mb:.0f} MB"
            )
            results["soak"].append(soak)
            checkpoint(results)
    return results


def write_report(document: dict[str, Any], report_dir: Path, say: Progress) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "REPORT.md").write_text(report.report_markdown(document))
    if chart.can_chart():
        chart.write_chart(document, report_dir / "throughput.png")
    else:
        say("no chart: matplotlib is not installed (pip install -e '.[bench]')")
    say(f"wrote {report_dir / 'REPORT.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        write_report(json.loads(args.render.read_text()), args.report_dir, Progress())
        return 0
    missing = missing_requirements()
    if missing:
        print(f"benchmarks: cannot run here, needs: {', '.join(missing)}", file=sys.stderr)
        return 2
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    # One client stands in for every application: its own limits would throttle the load the
    # relay's throughput is measured with (tests/integration/test_client_limits.py has them).
    settings = relay_settings(client_message_rate_limit=0, client_recipient_rate_limit=0)
    check_profiles(settings)
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    say = Progress()
    document: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": {
            "messages": args.messages,
            "repeats": args.repeats,
            "intervals_ms": args.intervals,
            "session_cap": settings.max_connections,
            "ablation_interval_ms": args.ablation_interval,
            "churn_runs": args.churn_runs,
            "churn_messages": args.churn_messages,
            "failures": args.failures,
            "outage_s": args.outage_seconds,
            "outage_messages": args.outage_messages,
            "dns_delay_ms": args.dns_delay_ms,
            "rtts_ms": args.rtts,
            "latency_messages": args.latency_messages,
            "latency_time_limit_s": args.latency_time_limit,
            "relays": args.relays,
            "relay_intervals_ms": args.relay_intervals,
            "relay_messages": args.relay_messages,
            "soak_messages": args.soak_messages,
            "soak_interval_ms": args.soak_interval,
            "soak_outage_s": args.soak_outage_seconds,
            "soak_stops": args.soak_stops,
        },
        "profiles": {
            p.name: {"title": p.title, "main_cf": dict(p.main_cf)} for p in PROFILES.values()
        },
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{stamp}.json"

    def save(results: dict[str, Any]) -> None:
        """The run so far, rewritten after every section: a crash keeps what was measured."""
        document.update(as_json(results))
        document["wall_s"] = time.monotonic() - say.started
        document["load_average_end"] = list(machine()["load_average"])
        json_path.write_text(json.dumps(document, indent=2) + "\n")

    with netns_etc(), secrets_service() as secrets:
        bench = scenarios.Bench(settings, secrets, args.results_dir / stamp)
        save(run_all(bench, args, say, save))
    (args.results_dir / f"{stamp}.md").write_text(report.results_markdown(document))
    say(f"wrote {json_path}")
    write_report(document, args.report_dir, say)
    return 1 if document["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
