"""Benchmark runs on the integration rig: real Postfix (the rendered debian-12 config, TLS and
AUTH on) and dnsmasq in network namespaces, against the stand-in for the service.

Every run builds a fresh rig and tears it down (processes stopped by PID, namespaces deleted);
logs and stand-in events are kept under the bench's artifacts directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from benchmarks import measure
from benchmarks.bounds import recovery_bound, throughput_bound
from benchmarks.profiles import PROFILES, Profile
from simworld.netns_rig import (
    API_USER,
    RELAY_IP,
    SERVICE_IPS,
    UPSTREAM_DNS,
    Mail,
    Network,
    Rig,
    RigOptions,
    Secrets,
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
from userdata.settings import RelaySettings

DNS_TOOLS: Final = Path(__file__).with_name("dns_tools.py")
DIRECT_CLIENT: Final = Path(__file__).with_name("direct_client.py")
# Submitted mail waits on hold, then is released at once: the relay drains a backlog, and the
# SMTP submission (which competes for the same CPUs) is not part of the measured window.
HOLD: Final = {"smtpd_end_of_data_restrictions": "check_client_access static:HOLD"}
SUBMITTERS: Final = 4
# A run ends when every message is delivered, or the rest waits for an attempt this far off.
HORIZON_S: Final = 60.0
DELAYED_DNS: Final = "198.51.100.54"  # the delaying forwarder, in the service namespace


class Bench:
    """Builds the rigs of one benchmark run, against one Secrets Manager (moto)."""

    def __init__(self, settings: RelaySettings, secrets: Secrets, artifacts: Path) -> None:
        self.settings = settings
        self.secrets = secrets
        self.artifacts = artifacts

    @contextlib.contextmanager
    def rig(
        self, name: str, profile: Profile, main_cf: dict[str, str] | None = None, **options: Any
    ) -> Iterator[Rig]:
        with contextlib.ExitStack() as stack:
            root = stack.enter_context(rig_directory(self.artifacts / name))
            changes = {**profile.main_cf, **(main_cf or {})}
            yield build_rig(
                stack, root, self.settings, RigOptions(main_cf=changes, **options), self.secrets
            )


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


def throughput(
    bench: Bench, profile: Profile, interval_ms: int, messages: int
) -> measure.Throughput:
    """Release a backlog of ``messages`` held on the relay and let it drain to a stand-in that
    holds each message ``interval_ms`` and allows maxConnections sessions."""
    cap = bench.settings.max_connections
    ideal_s = messages / throughput_bound(cap, interval_ms)
    with bench.rig(
        f"throughput-{profile.name}-{interval_ms}ms",
        profile,
        HOLD,
        standin=throughput_standin(interval_ms, cap),
    ) as rig:
        mails = new_mails(messages)
        with rig.wire_tap() as wire:
            submit(rig, mails)
            wait_until(
                lambda: rig.postfix.queued("hold") == messages,
                60,
                f"{messages} messages on hold",
            )
            run("postsuper", "-c", rig.postfix.config_dir, "-H", "ALL")
            released_at = time.time()
            rig.postfix.flush()
            left, next_attempt = settle(rig, messages, 3 * ideal_s + 120)
        host = bench.settings.relay_host
        return measure.throughput(
            profile=profile.name,
            interval_ms=interval_ms,
            messages=messages,
            session_cap=cap,
            relay_ip=RELAY_IP,
            released_at=released_at,
            events=rig.standin.events(),
            wire={"connections": wire.connections, "peak_open": wire.peak_open},
            deferrals=deferrals(rig),
            left_in_queue=left,
            next_attempt_s=next_attempt,
            dns_lookups=len(rig.cache.queries("query", host)),
            upstream_queries=len(rig.upstream.queries("auth", host)),
        )


def direct(bench: Bench, interval_ms: int, messages: int) -> measure.Throughput:
    """The same stand-in and load, but a minimal client (``direct_client.py``) instead of the
    relay: the ceiling this rig can show at ``interval_ms``."""
    cap = bench.settings.max_connections
    with bench.rig(
        f"throughput-direct-{interval_ms}ms",
        PROFILES["tuned"],
        standin=throughput_standin(interval_ms, cap),
    ) as rig:
        request = {
            "servers": list(SERVICE_IPS),
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
            relay_ip=RELAY_IP,
            released_at=json.loads(out)["started"],
            events=rig.standin.events(),
            wire={"connections": wire.connections, "peak_open": wire.peak_open},
            deferrals=0,
            left_in_queue=0,
            next_attempt_s=None,
            dns_lookups=0,
            upstream_queries=0,
        )


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
