"""Benchmark runs on the integration rig: real Postfix (the rendered debian-12 config, TLS and
AUTH on) and dnsmasq in network namespaces, against the stand-in for the service.

Every run builds a fresh rig and tears it down (processes stopped by PID, namespaces deleted);
logs and stand-in events are kept under the bench's artifacts directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from benchmarks import measure
from benchmarks.bounds import busy_fraction, recovery_bound, throughput_bound
from benchmarks.profiles import PROFILES, Profile
from cmc_relay.userdata.settings import RelaySettings
from simworld.netns_rig import (
    API_USER,
    PROXY_IPS,
    SERVICE_IPS,
    UPSTREAM_DNS,
    Mail,
    Network,
    Rig,
    RigOptions,
    Secrets,
    add_relay,
    build_rig,
    dns_cache,
    new_mail,
    new_mails,
    rig_directory,
    run,
    stop_process,
    upstream_dns,
    wait_until,
)
from simworld.standin import messages_from_events, stats_from_events

DNS_TOOLS: Final = Path(__file__).with_name("dns_tools.py")
DIRECT_CLIENT: Final = Path(__file__).with_name("direct_client.py")
# Submitted mail waits on hold, then is released at once: the relay drains a backlog, and the
# SMTP submission (which competes for the same CPUs) is not part of the measured window.
HOLD: Final = {"smtpd_end_of_data_restrictions": "check_client_access static:HOLD"}
SUBMITTERS: Final = 4
# A run ends when every message is delivered, or the rest waits for an attempt this far off.
HORIZON_S: Final = 60.0
DELAYED_DNS: Final = "198.51.100.54"  # the delaying forwarder, in the service namespace
# A graceful restart's wait for the deliveries in flight: many receiving intervals.
QUIESCE_S: Final = 3.0


class Bench:
    """Builds the rigs of one benchmark run, against one Secrets Manager (moto)."""

    def __init__(self, settings: RelaySettings, secrets: Secrets, artifacts: Path) -> None:
        self.settings = settings
        self.secrets = secrets
        self.artifacts = artifacts

    @contextlib.contextmanager
    def rigs(
        self,
        name: str,
        profile: Profile,
        main_cf: dict[str, str] | None = None,
        relays: int = 1,
        **options: Any,
    ) -> Iterator[list[Rig]]:
        """``relays`` relay hosts, each with its own sending address, against one stand-in."""
        with contextlib.ExitStack() as stack:
            root = stack.enter_context(rig_directory(self.artifacts / name))
            changes = {**profile.main_cf, **(main_cf or {})}
            first = build_rig(
                stack, root, self.settings, RigOptions(main_cf=changes, **options), self.secrets
            )
            more = [
                add_relay(stack, first, root / f"relay{n}", n, self.secrets)
                for n in range(1, relays)
            ]
            yield [first, *more]

    @contextlib.contextmanager
    def rig(
        self, name: str, profile: Profile, main_cf: dict[str, str] | None = None, **options: Any
    ) -> Iterator[Rig]:
        with self.rigs(name, profile, main_cf, **options) as [rig]:
            yield rig


# --------------------------------------------------------------------------- queue


def effective(rig: Rig, name: str) -> str:
    """A main.cf parameter's value as Postfix uses it (its default if not set)."""
    return run("postconf", "-c", rig.postfix.config_dir, "-xh", name).stdout.strip()


def next_attempts(rig: Rig) -> list[float]:
    """When Postfix will next try each deferred message: the queue file's mtime."""
    times = []
    for path in (rig.postfix.queue_dir / "deferred").rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # delivered meanwhile
            if path.is_file():
                times.append(path.stat().st_mtime)
    return times


def settle(rig: Rig, delivered: int, timeout: float) -> tuple[int, float | None]:
    """Wait until ``delivered`` messages reached the stand-in, or every message left is
    deferred with its next attempt beyond the horizon. Returns (messages left, seconds to the
    earliest next attempt)."""

    def settled() -> tuple[int, float | None] | None:
        if len(rig.standin.messages()) >= delivered and not rig.postfix.queue():
            return (0, None)
        queue = rig.postfix.queue()
        attempts = next_attempts(rig)
        now = time.time()
        if (
            queue
            and all(q["queue_name"] == "deferred" for q in queue)
            and len(attempts) == len(queue)
            and min(attempts) - now > HORIZON_S
        ):
            return (len(queue), min(attempts) - now)
        return None

    return wait_until(settled, timeout, "delivered or deferred beyond the horizon", 0.25)


def submit(rig: Rig, mails: Sequence[Mail]) -> None:
    """Submit from SUBMITTERS clients at once; every message must be accepted."""
    chunks = [list(mails[i::SUBMITTERS]) for i in range(SUBMITTERS)]
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        for replies in pool.map(rig.submit, chunks):
            refused = [r for r in replies if not r.accepted]
            assert not refused, f"relay refused {len(refused)}: {refused[0]}"


def deferrals(rig: Rig) -> int:
    return sum(d.status == "deferred" for d in rig.postfix.deliveries())


# --------------------------------------------------------------------------- throughput


def throughput_standin(interval_ms: int, cap: int) -> dict[str, Any]:
    """The stand-in of every throughput run: the receiving interval and the session cap,
    message bodies not kept."""
    return {"receive_interval_ms": interval_ms, "max_sessions_per_ip": cap, "record_data": False}


def release_backlog(rigs: Sequence[Rig], mails: Sequence[Sequence[Mail]]) -> float:
    """Submit ``mails[i]`` to relay ``i``, held, then release them all at once; returns when."""
    for rig, batch in zip(rigs, mails, strict=True):
        submit(rig, batch)
    for rig, batch in zip(rigs, mails, strict=True):
        count = len(batch)
        wait_until(
            lambda rig=rig, count=count: rig.postfix.queued("hold") >= count,  # type: ignore[misc]
            60 + count / 100,
            f"{count} messages on hold",
        )
    for rig in rigs:
        run("postsuper", "-c", rig.postfix.config_dir, "-H", "ALL")
    released_at = time.time()
    for rig in rigs:
        rig.postfix.flush()
    return released_at


def throughput(
    bench: Bench,
    profile: Profile,
    interval_ms: int,
    messages: int,
    one_way_delay_ms: float | None = None,
    time_limit_s: float | None = None,
) -> measure.Throughput:
    """Release a backlog of ``messages`` held on the relay and let it drain to a stand-in that
    holds each message ``interval_ms`` and allows maxConnections sessions; with
    ``one_way_delay_ms``, through the delaying proxy. A run still retrying after
    ``time_limit_s`` (default: three times the batch's time at the bound, plus two minutes) is
    cut off there and reports what it delivered."""
    cap = bench.settings.max_connections
    ideal_s = messages / throughput_bound(cap, interval_ms)
    limit = 3 * ideal_s + 120 if time_limit_s is None else time_limit_s
    delay = "" if one_way_delay_ms is None else f"-rtt{2 * one_way_delay_ms:g}ms"
    with bench.rig(
        f"throughput-{profile.name}-{interval_ms}ms{delay}",
        profile,
        HOLD,
        standin=throughput_standin(interval_ms, cap),
        one_way_delay_ms=one_way_delay_ms,
    ) as rig:
        with rig.wire_tap() as wire:
            released_at = release_backlog([rig], [new_mails(messages)])
            cut_off_at = None
            try:
                left, next_attempt = settle(rig, messages, limit)
            except TimeoutError:
                cut_off_at = time.time()
                left, next_attempt = len(rig.postfix.queue()), None
        host = bench.settings.relay_host
        return measure.throughput(
            profile=profile.name,
            interval_ms=interval_ms,
            messages=messages,
            session_cap=cap,
            relay_ip=rig.seen_as,
            released_at=released_at,
            events=rig.standin.events(),
            wire={"connections": wire.connections, "peak_open": wire.peak_open},
            deferrals=deferrals(rig),
            left_in_queue=left,
            next_attempt_s=next_attempt,
            dns_lookups=len(rig.cache.queries("query", host)),
            upstream_queries=len(rig.upstream.queries("auth", host)),
            cut_off_at=cut_off_at,
        )


def direct(
    bench: Bench, interval_ms: int, messages: int, one_way_delay_ms: float | None = None
) -> measure.Throughput:
    """The same stand-in and load, but a minimal client (``direct_client.py``) instead of the
    relay: the ceiling this rig can show at ``interval_ms`` (and delay)."""
    cap = bench.settings.max_connections
    delay = "" if one_way_delay_ms is None else f"-rtt{2 * one_way_delay_ms:g}ms"
    with bench.rig(
        f"throughput-direct-{interval_ms}ms{delay}",
        PROFILES["tuned"],
        standin=throughput_standin(interval_ms, cap),
        one_way_delay_ms=one_way_delay_ms,
    ) as rig:
        request = {
            "servers": list(SERVICE_IPS if one_way_delay_ms is None else PROXY_IPS),
            "port": bench.settings.smtp_port,
            "ca_file": str(rig.standin.ca_path),
            "user": API_USER,
            "password": rig.api_key,
            "sessions": cap,
            "messages": messages,
        }
        with rig.wire_tap() as wire:
            out = run(
                *rig.network.exec(rig.network.relay, sys.executable, DIRECT_CLIENT),
                input=json.dumps(request),
                timeout=3 * messages / throughput_bound(cap, interval_ms) + 60,
            ).stdout
        return measure.throughput(
            profile="direct",
            interval_ms=interval_ms,
            messages=messages,
            session_cap=cap,
            relay_ip=rig.seen_as,
            released_at=json.loads(out)["started"],
            events=rig.standin.events(),
            wire={"connections": wire.connections, "peak_open": wire.peak_open},
            deferrals=0,
            left_in_queue=0,
            next_attempt_s=None,
            dns_lookups=0,
            upstream_queries=0,
        )


def latency(
    bench: Bench, client: str, interval_ms: int, rtt_ms: float, messages: int, time_limit_s: float
) -> measure.LatencyRun:
    """One point of the latency matrix: ``client`` (a profile's name, or ``direct``) through
    the proxy that delays each direction by half of ``rtt_ms``; a relay still retrying after
    ``time_limit_s`` is cut off (the guide's settings, whose refused sessions back off)."""
    if client == "direct":
        run_ = direct(bench, interval_ms, messages, rtt_ms / 2)
    else:
        run_ = throughput(bench, PROFILES[client], interval_ms, messages, rtt_ms / 2, time_limit_s)
    return measure.latency_run(run_, rtt_ms)


# What the relay's smtp client sends, from its verbose log (debug_peer_list for the service).
_SENT = re.compile(r"postfix/smtp\[\d+\]: > \S+: ([A-Z]+(?: FROM| TO)?)")


def commands_sent(bench: Bench, messages: int) -> dict[str, int]:
    """The SMTP commands the rendered relay sends for ``messages`` held and released, counted
    in its log with debug_peer_list covering the service (not timed: the logging slows it)."""
    with bench.rig(
        "commands",
        PROFILES["tuned"],
        {**HOLD, "debug_peer_list": "203.0.113.0/24"},
        standin=throughput_standin(200, bench.settings.max_connections),
    ) as rig:
        release_backlog([rig], [new_mails(messages)])
        settle(rig, messages, 120)
        return dict(Counter(_SENT.findall(rig.postfix.log())))


def multi_relay(
    bench: Bench, profile: Profile, relays: int, interval_ms: int, messages: int
) -> measure.MultiRelay:
    """``relays`` relay hosts, each with its own address and ``messages`` held, released at
    once to one stand-in whose cap (maxConnections) is per sending address."""
    cap = bench.settings.max_connections
    total = relays * messages
    ideal_s = messages / throughput_bound(cap, interval_ms)
    with bench.rigs(
        f"relays{relays}-{profile.name}-{interval_ms}ms",
        profile,
        HOLD,
        relays=relays,
        standin=throughput_standin(interval_ms, cap),
    ) as rigs:
        before = cpu_ticks()
        released_at = release_backlog(rigs, [new_mails(messages) for _ in rigs])
        left = sum(settle(rig, total, 3 * ideal_s + 120)[0] for rig in rigs)
        busy = busy_fraction(before, cpu_ticks())
        return measure.multi_relay(
            profile=profile.name,
            interval_ms=interval_ms,
            messages=total,
            session_cap=cap,
            relay_ips=[rig.seen_as for rig in rigs],
            released_at=released_at,
            events=rigs[0].standin.events(),
            left_in_queue=left,
            cpu_busy=busy,
        )


def soak(
    bench: Bench,
    profile: Profile,
    messages: int,
    interval_ms: int,
    outage_s: float,
    stop: str,
) -> measure.Soak:
    """A long drain: ``messages`` released at once; a third of the way the service goes down
    for ``outage_s``, two thirds of the way Postfix is stopped and started (``stop``: ``plain``
    ``postfix stop``, or ``graceful``: see ``graceful_restart``). Every message must arrive
    exactly once (Message-ID and body hash), none bounce."""
    cap = bench.settings.max_connections
    bound = throughput_bound(cap, interval_ms)
    with bench.rig(
        f"soak-{profile.name}-{stop}", profile, HOLD, standin=throughput_standin(interval_ms, cap)
    ) as rig:
        mails = new_mails(messages)
        with RssPeaks(rig) as rss:
            released_at = release_backlog([rig], [mails])
            timeout = 3 * messages / bound + outage_s + 300

            def reached(count: int) -> None:
                wait_until(lambda: rig.standin.delivered() >= count, timeout, f"{count} in", 0.2)

            reached(messages // 3)
            rig.standin.down()
            outage_at = time.time()
            time.sleep(outage_s)
            rig.standin.up()
            reached(2 * messages // 3)
            restart_at = time.time()
            if stop == "graceful":
                graceful_restart(rig)
            else:
                rig.postfix.restart()
            reached(messages)
            rig.postfix.wait_for_empty_queue(timeout)
        events = rig.standin.events()
        return measure.soak(
            profile=profile.name,
            stop=stop,
            interval_ms=interval_ms,
            session_cap=cap,
            outage_s=outage_s,
            released_at=released_at,
            outage_at=outage_at,
            restart_at=restart_at,
            expected={m.message_id: m.body_sha256 for m in mails},
            records=messages_from_events(events),
            refused_sessions=stats_from_events(events).refused_sessions,
            bounces=sum(d.status == "bounced" for d in rig.postfix.deliveries()),
            deferrals=deferrals(rig),
            postfix_kb=rss.postfix,
            standin_kb=rss.standin,
        )


def graceful_restart(rig: Rig) -> None:
    """Stop and start Postfix without cutting a delivery short: the queue manager stops handing
    mail to smtp (``defer_transports``; the reload lets running deliveries finish), the stop
    waits QUIESCE_S for those, and after the start the deferred rest is flushed."""
    conf = rig.postfix.config_dir
    run("postconf", "-c", conf, "-e", "defer_transports=smtp")
    run("postfix", "-c", conf, "reload")
    time.sleep(QUIESCE_S)
    rig.postfix.stop()
    run("postconf", "-c", conf, "-e", "defer_transports=")
    rig.postfix.start()
    rig.postfix.flush()


class RssPeaks:
    """Samples, every half second while the block runs, the resident memory of the relay
    namespace's processes (Postfix's; the dnsmasq cache left out) summed, and the stand-in's:
    peaks of RSS (shared pages counted in each process) and PSS (shared pages divided)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.postfix = {"rss": 0, "pss": 0}
        self.standin = {"rss": 0, "pss": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            pids = run("ip", "netns", "pids", self.rig.network.relay).stdout.split()
            postfix = [memory_kb(int(pid)) for pid in pids if _comm(int(pid)) != "dnsmasq"]
            standin = memory_kb(self.rig.standin.process.pid)
            for kind in ("rss", "pss"):
                total = sum(m[kind] for m in postfix)
                self.postfix[kind] = max(self.postfix[kind], total)
                self.standin[kind] = max(self.standin[kind], standin[kind])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def memory_kb(pid: int) -> dict[str, int]:
    """A process's ``rss`` and ``pss`` in kB (/proc/PID/smaps_rollup); 0 once it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {"rss": 0, "pss": 0}
    fields = {line.split(":")[0]: line.split()[1] for line in rollup.splitlines()[1:]}
    return {"rss": int(fields.get("Rss", 0)), "pss": int(fields.get("Pss", 0))}


# --------------------------------------------------------------------------- recovery


def _recovery(
    rig: Rig, profile: Profile, scenario: str, count: int, usable_at: float | None
) -> measure.Recovery:
    """The outcome once ``settle`` has returned; ``usable_at`` is when the service worked again
    (None: Postfix stopped before the service was usable, e.g. before all faults were used)."""
    bound = recovery_bound(
        effective(rig, "maximal_backoff_time"), effective(rig, "queue_run_delay")
    )
    records = rig.standin.messages()
    attempts = next_attempts(rig)
    recovered = next_attempt = None
    if len(records) == count and usable_at is not None:
        recovered = max(r.accepted_at for r in records) - usable_at
    elif attempts:
        reference = usable_at if usable_at is not None else _last_failure(rig)
        next_attempt = min(attempts) - reference
    return measure.Recovery(
        profile=profile.name,
        scenario=scenario,
        messages=count,
        bound_s=bound,
        recovered_s=recovered,
        next_attempt_s=next_attempt,
        within_bound=None if recovered is None else recovered <= bound,
        failures_seen=_failures_seen(rig),
        delivered=len(records),
    )


def _failures_seen(rig: Rig) -> int:
    stats = rig.standin.stats()
    return stats.delivery_outcomes.get("451", 0) + stats.refused_by_reason.get("fault_421", 0)


def _last_failure(rig: Rig) -> float:
    failures = [
        e["t"]
        for e in rig.standin.events()
        if (e["event"] == "delivery_end" and e["outcome"] == "451")
        or (e["event"] == "session_refused" and e["reason"] == "fault_421")
    ]
    return max(failures)


def temporary_failures(
    bench: Bench, profile: Profile, kind: str, failures: int
) -> measure.Recovery:
    """One message; the service fails it ``failures`` times (``451`` at end of DATA or a
    ``421`` greeting), then works: from the last failure to the delivery. One DNS address, so
    each failure costs a delivery attempt of its own."""
    fault = {"451": "data_451_messages", "421": "greeting_421_sessions"}[kind]
    scenario = f"{kind}x{failures}"
    with bench.rig(
        f"recovery-{profile.name}-{scenario}",
        profile,
        standin={fault: failures},
        dns_addresses=SERVICE_IPS[:1],
    ) as rig:
        rig.send([new_mail()])
        settle(rig, 1, failures * 60 + 120)
        usable_at = _last_failure(rig) if _failures_seen(rig) == failures else None
        return _recovery(rig, profile, scenario, 1, usable_at)


def outage(bench: Bench, profile: Profile, messages: int, outage_s: float) -> measure.Recovery:
    """The service is down for ``outage_s`` while ``messages`` come in: from its return to the
    last of them delivered."""
    with bench.rig(f"recovery-{profile.name}-outage", profile) as rig:
        rig.standin.down()
        down_at = time.monotonic()
        rig.send(new_mails(messages))
        wait_until(
            lambda: rig.postfix.queued("deferred") == messages,
            outage_s + 30,
            f"all {messages} deferred",
        )
        time.sleep(max(0.0, down_at + outage_s - time.monotonic()))
        rig.standin.up()
        up_at = next(e["t"] for e in rig.standin.events() if e["event"] == "up")
        settle(rig, messages, 300)
        return _recovery(rig, profile, "outage", messages, up_at)


# --------------------------------------------------------------------------- DNS


def dns_latency(bench: Bench, delay_ms: float, rounds: int, per_round: int) -> measure.DnsLatency:
    """Lookups of the service's name from the relay namespace, through the rendered dnsmasq
    cache and straight to an upstream resolver that answers ``delay_ms`` late. The cache's TTL
    is short, so the first lookup of each round (after a pause longer than it) is a miss."""
    settings = bench.settings
    ttl = 1
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(rig_directory(bench.artifacts / "dns-latency"))
        network = Network(f"cmcbench-{os.getpid()}-dns", settings.host_name)
        stack.callback(network.destroy)
        run("ip", "-n", network.service, "addr", "add", f"{DELAYED_DNS}/32", "dev", "cmc0")
        upstream = upstream_dns(
            network, root / "dns-upstream.log", settings.relay_host, ttl, SERVICE_IPS
        )
        stack.callback(upstream.stop)
        forwarder = subprocess.Popen(
            network.exec(
                network.service,
                sys.executable,
                DNS_TOOLS,
                "delay",
                DELAYED_DNS,
                UPSTREAM_DNS,
                str(delay_ms),
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(stop_process, forwarder)
        assert forwarder.stdout is not None
        if forwarder.stdout.readline().strip() != "READY":
            raise RuntimeError("the delaying DNS forwarder did not start")
        # The cache forwards to what resolv.conf lists after itself: here, the far resolver.
        (network.etc / "resolv.conf").write_text(
            f"nameserver 127.0.0.1\nnameserver {DELAYED_DNS}\n"
        )
        cache = dns_cache(network, root, settings)
        stack.callback(cache.stop)

        def probe(server: str) -> list[list[float]]:
            out = run(
                *network.exec(
                    network.relay, sys.executable, DNS_TOOLS, "probe", server,
                    settings.relay_host, str(rounds), str(per_round), str(ttl + 0.5),
                ),
                timeout=rounds * (ttl + 5) + 30,
            ).stdout  # fmt: skip
            return json.loads(out)

        cached = probe("127.0.0.1")
        direct = probe(DELAYED_DNS)
    return measure.DnsLatency(
        upstream_delay_ms=delay_ms,
        ttl_s=ttl,
        cache_hit=measure.latency([ms for r in cached for ms in r[1:]]),
        cache_miss=measure.latency([r[0] for r in cached]),
        direct=measure.latency([ms for r in direct for ms in r]),
    )
