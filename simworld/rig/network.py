"""The rig's network: a relay and a service namespace joined by a veth pair (the drawing is in
``simworld.netns_rig``), their addresses, and the delaying proxy between them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from simworld.rig.process import run, stop_process

DELAY_PROXY: Final = Path(__file__).parents[1] / "delay_proxy.py"

# The first relay's sending address; more relay namespaces (Network(join=...)) get the others.
RELAY_IPS: Final = ("198.51.100.2", "198.51.100.3", "198.51.100.4")
RELAY_IP: Final = RELAY_IPS[0]
SERVICE_GATEWAY: Final = "198.51.100.1"
UPSTREAM_DNS: Final = "198.51.100.53"
SERVICE_IPS: Final = ("203.0.113.10", "203.0.113.11", "203.0.113.12")
# The delaying proxy (RigOptions.one_way_delay_ms), in the service ns: where DNS then points,
# and the one address it connects to the stand-in from.
PROXY_IPS: Final = ("203.0.113.20", "203.0.113.21", "203.0.113.22")
PROXY_SOURCE: Final = "198.51.100.9"
CLIENT_INSIDE: Final = "192.0.2.10"
CLIENT_INSIDE_OTHER: Final = "192.0.2.11"
CLIENT_OUTSIDE: Final = "192.0.2.200"
ALLOWED_CIDRS: Final = ("192.0.2.0/26",)


class Network:
    """The relay and service namespaces, created on construction; ``destroy`` undoes it all.

    With ``join``, only another relay namespace is made, with its own sending address
    (``RELAY_IPS[number]``) and its own veth (``cmc<number>``) into ``join``'s service
    namespace: several relay hosts against one service, which tells them apart by address.
    """

    def __init__(
        self, tag: str, host_name: str, join: Network | None = None, number: int = 0
    ) -> None:
        self.relay = tag
        self.service: str = join.service if join else f"{tag}-svc"
        self.number = number
        self.joined = join is not None
        self.relay_ip = RELAY_IPS[number]
        self.etc = Path("/etc/netns") / self.relay
        self.created: list[str] = []
        try:
            self._create(host_name)
        except BaseException:
            self.destroy()
            raise

    def _create(self, host_name: str) -> None:
        with_service, number = not self.joined, self.number
        for name in (self.relay, self.service) if with_service else (self.relay,):
            run("ip", "netns", "add", name)
            self.created.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        # ip netns exec bind-mounts these over /etc/resolv.conf and /etc/hosts in the relay ns.
        self.etc.mkdir()
        resolv = f"nameserver 127.0.0.1\nnameserver {UPSTREAM_DNS}\n"
        (self.etc / "resolv.conf").write_text(resolv)
        short = host_name.split(".", 1)[0]
        hosts = f"127.0.0.1 localhost\n::1 localhost\n{self.relay_ip} {host_name} {short}\n"
        (self.etc / "hosts").write_text(hosts)
        link = f"cmc{number}"
        run(
            "ip", "link", "add", "cmc0", "netns", self.relay,
            "type", "veth", "peer", "name", link, "netns", self.service,
        )  # fmt: skip
        clients = (CLIENT_INSIDE, CLIENT_INSIDE_OTHER, CLIENT_OUTSIDE)
        relay = (f"{self.relay_ip}/24", *(f"{client}/32" for client in clients))
        service = (
            (f"{SERVICE_GATEWAY}/24", f"{UPSTREAM_DNS}/32", *(f"{ip}/32" for ip in SERVICE_IPS))
            if with_service
            else ()
        )
        for name, dev, cidrs in ((self.relay, "cmc0", relay), (self.service, link, service)):
            for cidr in cidrs:
                run("ip", "-n", name, "addr", "add", cidr, "dev", dev)
            run("ip", "-n", name, "link", "set", dev, "up")
        if not with_service:
            # The service's /24 is on cmc0 there: this relay's address is reached on its link.
            run("ip", "-n", self.service, "route", "add", f"{self.relay_ip}/32", "dev", link)
        run("ip", "-n", self.relay, "route", "add", "default", "via", SERVICE_GATEWAY)

    def exec(self, netns: str, *cmd: str | Path) -> list[str]:
        return ["ip", "netns", "exec", netns, *(str(c) for c in cmd)]

    def destroy(self) -> None:
        """Kill what still runs inside (only our processes live there), then delete."""
        for name in self.created:
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            deleted = subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, text=True, check=False
            )
            if deleted.returncode != 0:
                # Teardown goes on; the leftover is named where the run's output shows it.
                print(f"namespace {name} not deleted: {deleted.stderr.strip()}", file=sys.stderr)
        shutil.rmtree(self.etc, ignore_errors=True)


@contextlib.contextmanager
def netns_etc() -> Iterator[None]:
    """/etc/netns, where ``ip netns exec`` finds per-namespace files; removed again if this
    block created it and left it empty."""
    etc = Path("/etc/netns")
    created = not etc.exists()
    etc.mkdir(exist_ok=True)
    try:
        yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                etc.rmdir()


def delay_proxy(network: Network, one_way_ms: float, port: int) -> subprocess.Popen[str]:
    """``delay_proxy.py`` in the service namespace: PROXY_IPS forward to SERVICE_IPS, every
    byte ``one_way_ms`` late each way; the stand-in sees its clients as PROXY_SOURCE."""
    for ip in (*PROXY_IPS, PROXY_SOURCE):
        run("ip", "-n", network.service, "addr", "add", f"{ip}/32", "dev", "cmc0")
    pairs = [f"{p}:{port}={s}:{port}" for p, s in zip(PROXY_IPS, SERVICE_IPS, strict=True)]
    process = subprocess.Popen(
        network.exec(network.service, sys.executable, DELAY_PROXY, str(one_way_ms), PROXY_SOURCE,
                     *pairs),
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != "READY":
        stop_process(process)
        raise RuntimeError("the delaying proxy did not start")
    return process
