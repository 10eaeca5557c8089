"""DNS in the rig: the upstream resolver in the service namespace and the relay's dnsmasq
cache, run with the rendered dnsmasq.conf (G13)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cmc_relay.userdata.render import render_template
from cmc_relay.userdata.settings import RelaySettings
from simworld.rig.network import UPSTREAM_DNS, Network
from simworld.rig.process import stop_process, wait_until


class Dnsmasq:
    """A foreground dnsmasq in a namespace, logging every query to its own file."""

    def __init__(self, network: Network, netns: str, log: Path, args: Sequence[str]) -> None:
        self.log = log
        command = network.exec(
            netns, "dnsmasq", "--keep-in-foreground", "--pid-file=", "--log-queries",
            f"--log-facility={log}", *args,
        )  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(self._started, 10, f"dnsmasq in {netns}")
        except BaseException:
            self.stop()
            raise

    def _started(self) -> bool:
        if self.process.poll() is not None:
            assert self.process.stderr is not None
            raise RuntimeError(f"dnsmasq exited: {self.process.stderr.read()}")
        return self.log.exists() and " started, version " in self.log.read_text()

    def queries(self, kind: str, name: str) -> list[str]:
        """Log lines of queries of ``kind`` (``query`` asked to forward, ``auth`` answered
        authoritatively) for ``name``, any record type."""
        pattern = re.compile(rf": {kind}\[\w+\] {re.escape(name)} from ")
        return [line for line in self.log.read_text().splitlines() if pattern.search(line)]

    def cached_answers(self, name: str) -> set[str]:
        """What this dnsmasq answered for ``name`` from its cache: addresses, or a NODATA marker."""
        pattern = re.compile(rf": cached {re.escape(name)} is (\S+)$")
        return {m[1] for line in self.log.read_text().splitlines() if (m := pattern.search(line))}

    def stop(self) -> None:
        stop_process(self.process)


def upstream_dns(
    network: Network, log: Path, host: str, ttl: int, addresses: Sequence[str]
) -> Dnsmasq:
    """The resolver the relay falls back to, answering ``host`` with ``addresses``.

    Authoritative for ``host`` (auth-zone): A answers carry ``ttl``, and AAAA gets an empty
    answer with an SOA, so a cache keeps both like a real resolver's (plain ``--host-record``
    answers AAAA with REFUSED, which no cache keeps).
    """
    records = [f"--host-record={host},{ip}" for ip in addresses]
    return Dnsmasq(
        network,
        network.service,
        log,
        [
            "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--listen-address={UPSTREAM_DNS}", f"--auth-server=ns.{host},{UPSTREAM_DNS}",
            f"--auth-zone={host}", f"--auth-ttl={ttl}", *records,
        ],
    )  # fmt: skip


def dns_cache(network: Network, root: Path, settings: RelaySettings) -> Dnsmasq:
    """The relay's cache, run with exactly the rendered dnsmasq.conf (plus the query log)."""
    conf = root / "dnsmasq.conf"
    conf.write_text(render_template("/etc/dnsmasq.d/cmc-relay.conf", settings))
    return Dnsmasq(network, network.relay, root / "dnsmasq-cache.log", [f"--conf-file={conf}"])
