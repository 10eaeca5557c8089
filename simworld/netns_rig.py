"""The rendered relay on real Postfix and dnsmasq, in network namespaces, against the stand-in.

Two namespaces joined by a veth pair stand for the relay host and the internet::

    relay ns    cmc0  198.51.100.2/24   the relay's sending address (its Elastic IP)
                      192.0.2.10        a client inside allowedCidrs (192.0.2.0/26)
                      192.0.2.11        another client inside it (per-client limits)
                      192.0.2.200       a client outside it
                lo    127.0.0.1         dnsmasq cache (rendered dnsmasq.conf, G13)
                Postfix (Debian's stock config + the payload, by cmc-relay-setup) on *:25
                /etc/resolv.conf = nameserver 127.0.0.1, then the upstream (G14)
    service ns  cmc0  198.51.100.1/24
                      198.51.100.53     upstream DNS: the SMTP host name -> 3 addresses
                      203.0.113.10-12   the SMTP host's round robin: one stand-in, port 10025

The relay namespace's /etc/resolv.conf and /etc/hosts are ``ip netns exec``'s bind mounts
from /etc/netns/NAME/, created and removed here; the machine's own files are never touched.
Only loopback (moto, for the fetch script) and addresses inside these namespaces see traffic.

This module puts the pieces in ``simworld/rig/`` together: ``Rig``, ``RigOptions``,
``build_rig``, ``add_relay``. It also re-exports them (``__all__``), so tests and benchmarks
import the whole rig from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmc_relay.userdata.settings import RelaySettings
from simworld.rig.aws import (
    API_USER,
    Credentials,
    Secrets,
    moto_on_loopback,
    secrets_service,
)
from simworld.rig.dns import Dnsmasq, dns_cache, upstream_dns
from simworld.rig.mail import Mail, Reply, new_mail, new_mails
from simworld.rig.network import (
    ALLOWED_CIDRS,
    CLIENT_INSIDE,
    CLIENT_INSIDE_OTHER,
    CLIENT_OUTSIDE,
    PROXY_IPS,
    PROXY_SOURCE,
    RELAY_IP,
    RELAY_IPS,
    SERVICE_IPS,
    UPSTREAM_DNS,
    Network,
    delay_proxy,
    netns_etc,
)
from simworld.rig.postfix import INBOUND_CERT, REQUIRED_FILES, Postfix, configure_postfix
from simworld.rig.process import REPO, run, stop_process, wait_until
from simworld.rig.service import StandInProcess
from simworld.standin import MessageRecord, StandInConfig
from simworld.standin import tls as standin_tls

# What tests and benchmarks import from here, besides what this module defines: the pieces.
__all__ = [
    "API_USER", "CLIENT_INSIDE", "CLIENT_INSIDE_OTHER", "CLIENT_OUTSIDE",
    "INBOUND_CERT", "PROXY_IPS", "RELAY_IP", "RELAY_IPS", "REPO", "SERVICE_IPS", "UPSTREAM_DNS",
    "Dnsmasq", "Mail", "MakeRig", "Network", "Postfix", "Reply", "Rig", "RigOptions", "Secrets",
    "StandInProcess", "WireCount", "add_relay", "build_rig", "dns_cache", "missing_requirements",
    "moto_on_loopback", "netns_etc", "new_mail", "new_mails", "relay_settings", "rig_directory",
    "run", "secrets_service", "stop_process", "upstream_dns", "wait_until",
]  # fmt: skip

SMTP_CLIENT: Final = Path(__file__).with_name("smtp_client.py")
WIRE_TAP: Final = Path(__file__).with_name("wire_tap.py")

REQUIRED_BINARIES: Final = (
    "ip", "postfix", "postconf", "postmap", "postalias", "postqueue", "dnsmasq",
)  # fmt: skip

# Kept for a post-mortem in pytest's tmp_path (never the password table).
ARTIFACTS: Final = (
    "maillog", "standin-events.jsonl", "dns-upstream.log", "dnsmasq-cache.log",
    "postfix/main.cf", "postfix/transport",
)  # fmt: skip

_rig_numbers = itertools.count(1)


def relay_settings(**changes: Any) -> RelaySettings:
    """The debian-12 relay the rig runs, clients allowed from 192.0.2.0/26."""
    return RelaySettings(**{"allowed_cidrs": ALLOWED_CIDRS, "os": "debian-12", **changes})


def missing_requirements() -> list[str]:
    """Why the rig cannot run here (not root, a binary or file missing); empty if it can."""
    missing = [] if os.geteuid() == 0 else ["root (network namespaces, Postfix)"]
    missing += [b for b in REQUIRED_BINARIES if not shutil.which(b)]
    missing += [str(f) for f in REQUIRED_FILES if not f.exists()]
    return missing


@dataclass
class WireCount:
    """The relay's connections to the service, seen on the wire (see ``wire_tap``)."""

    connections: int = 0
    peak_open: int = 0


@dataclass
class Rig:
    """Everything one test runs against; built by ``build_rig``."""

    settings: RelaySettings
    network: Network
    upstream: Dnsmasq
    cache: Dnsmasq
    standin: StandInProcess
    postfix: Postfix
    api_key: str
    """The key the stand-in accepts for API_USER."""
    credentials: Credentials | None
    """None in IP address authentication mode."""
    options: RigOptions
    seen_as: str
    """The client address the stand-in sees for this relay: its sending address, or the
    delaying proxy's (``RigOptions.one_way_delay_ms``)."""
    trusted_ca: Path
    """The CA the relay trusts (its ``smtp_tls_CAfile``), as a host trusts the public CAs:
    the stand-in's, unless ``RigOptions.standin`` gives it a ``tls_dir`` of its own."""

    def submit(
        self,
        mails: Iterable[Mail],
        *,
        source: str = CLIENT_INSIDE,
        declare_size: bool = True,
        starttls: bool = False,
    ) -> list[Reply]:
        """Send over SMTP to the relay's port 25 from ``source``, inside the relay ns;
        ``starttls``: after STARTTLS (the certificate not verified, as for a self-signed one)."""
        request = {
            "server": self.network.relay_ip,
            "port": 25,
            "source": source,
            "declare_size": declare_size,
            "starttls": starttls,
            "messages": [
                {"sender": m.sender, "recipients": [m.recipient], "data": m.data} for m in mails
            ],
        }
        out = run(
            *self.network.exec(self.network.relay, sys.executable, SMTP_CLIENT),
            input=json.dumps(request),
        ).stdout
        return [Reply(**reply) for reply in json.loads(out)]

    @contextlib.contextmanager
    def wire_tap(self) -> Iterator[WireCount]:
        """Count the relay's connections to the service port while the block runs; the
        counts are filled in when it ends."""
        count = WireCount()
        command = self.network.exec(
            self.network.relay, sys.executable, WIRE_TAP, "cmc0", str(self.settings.smtp_port)
        )
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            ready = process.stdout.readline()
            if ready.strip() != "READY":
                raise RuntimeError(f"wire tap did not start: {ready!r}")
            yield count
            process.send_signal(signal.SIGTERM)
            result = json.loads(process.communicate(timeout=10)[0])
            count.connections, count.peak_open = result["connections"], result["peak_open"]
        finally:
            stop_process(process)

    def sendmail(self, mail: Mail) -> None:
        """Submit as a program on the relay host itself does (cron, a bounce notice): Postfix's
        sendmail command as root, which is the envelope sender; the local pickup path."""
        command = ("sendmail", "-C", self.postfix.config_dir, "-i", "--", mail.recipient)
        run(*self.network.exec(self.network.relay, *command), input=mail.data)

    def send(self, mails: Sequence[Mail]) -> None:
        """Submit from inside allowedCidrs; every message must be accepted."""
        replies = self.submit(mails)
        refused = [r for r in replies if not r.accepted]
        assert not refused, f"relay refused {len(refused)} of {len(replies)}: {refused[0]}"

    def queue_deferred(self, mails: Sequence[Mail]) -> None:
        """With the service down: submit, and wait until Postfix has tried and deferred each."""
        self.standin.down()
        self.send(mails)
        wait_until(
            lambda: [q["queue_name"] for q in self.postfix.queue()] == ["deferred"] * len(mails),
            30,
            f"{len(mails)} messages deferred",
        )

    def delivered_once(self, mails: Sequence[Mail], timeout: float = 60) -> list[MessageRecord]:
        """Wait until Postfix's queue is empty, then check each mail reached the stand-in
        exactly once, intact. Nothing is left to retry then, so no duplicate can follow."""
        self.postfix.wait_for_empty_queue(timeout)
        by_id = {m.message_id: m for m in mails}
        arrived = [
            (r, by_id[r.message_id])
            for r in self.standin.messages()
            if r.message_id is not None and r.message_id in by_id
        ]
        counts = Counter(mail.message_id for _, mail in arrived)
        duplicates = sorted(i for i, n in counts.items() if n > 1)
        assert not duplicates, f"delivered more than once: {duplicates}"
        lost = sorted(by_id.keys() - counts.keys())
        assert not lost, f"{len(lost)} of {len(mails)} never delivered: {lost[:3]}"
        damaged = [r.message_id for r, mail in arrived if r.body_sha256 != mail.body_sha256]
        assert not damaged, f"bodies changed in transit: {damaged}"
        return [record for record, _ in arrived]


MakeRig = Callable[..., Rig]
"""The ``make_rig`` fixture: ``make_rig(settings=None, **RigOptions fields)``."""


@dataclass(frozen=True)
class RigOptions:
    """What a test may vary besides the relay settings."""

    standin: dict[str, Any] = dataclasses.field(default_factory=dict)
    """StandInConfig changes on top of the rig's defaults (hosts, port, name, user, TLS dir).
    Another ``tls_dir`` makes an impostor: its certificate is signed by a CA the relay does
    not trust; other ``cert_names``, one for another name."""
    dns_ttl: int = 300
    dns_addresses: tuple[str, ...] = SERVICE_IPS
    """What DNS answers for the SMTP host (the stand-in listens on all three regardless)."""
    api_key: str | None = None
    """The key stored in the secret; None = the key the stand-in accepts."""
    main_cf: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    """Changes to the rendered main.cf parameters (see ``configure_postfix``)."""
    one_way_delay_ms: float | None = None
    """Set: the relay reaches the service through ``delay_proxy.py``, which delays each
    direction this long (DNS answers the proxy's addresses, PROXY_IPS)."""
    spool_size: str | None = None
    """Set (``16m``): Postfix's queue directory is a tmpfs of this size, a file system of its
    own as the queue's volume is on the host."""


def build_rig(
    stack: contextlib.ExitStack,
    root: Path,
    settings: RelaySettings,
    options: RigOptions,
    secrets: Secrets,
) -> Rig:
    """Start everything in order; ``stack`` stops it all again, in reverse, whatever fails."""
    tag = f"cmcrt-{os.getpid()}-{next(_rig_numbers)}"
    network = Network(tag, settings.host_name)
    stack.callback(network.destroy)
    addresses = options.dns_addresses
    if options.one_way_delay_ms is not None:
        addresses = tuple(PROXY_IPS[SERVICE_IPS.index(ip)] for ip in addresses)
    upstream = upstream_dns(
        network, root / "dns-upstream.log", settings.relay_host, options.dns_ttl, addresses
    )
    stack.callback(upstream.stop)
    api_key = uuid.uuid4().hex
    # The CA the relay trusts, made before the stand-in, which uses it unless told otherwise.
    trusted_ca = root / "tls" / standin_tls.CA_CERT_FILE
    standin_tls.certificate_authority(trusted_ca.parent)
    standin_config = StandInConfig(
        hosts=SERVICE_IPS,
        port=settings.smtp_port,
        hostname=settings.relay_host,
        # The proxy's addresses too: a client that checks names connects to those.
        cert_names=(settings.relay_host, *SERVICE_IPS, *PROXY_IPS),
        tls_dir=str(root / "tls"),
        users={API_USER: api_key},
        # The console's session cap matches what the relay is configured for (G9).
        max_sessions_per_ip=settings.max_connections,
    ).with_changes(**options.standin)
    standin = StandInProcess(network, root, standin_config)
    stack.callback(standin.stop)
    seen_as = network.relay_ip
    if options.one_way_delay_ms is not None:
        seen_as = PROXY_SOURCE
        proxy = delay_proxy(network, options.one_way_delay_ms, settings.smtp_port)
        stack.callback(stop_process, proxy)
    return _relay(
        stack, root, network, settings, options, secrets, standin, upstream, api_key, seen_as,
        trusted_ca,
    )  # fmt: skip


def add_relay(
    stack: contextlib.ExitStack, rig: Rig, root: Path, number: int, secrets: Secrets
) -> Rig:
    """Another relay host (namespace, dnsmasq cache, Postfix, its own sending address
    ``RELAY_IPS[number]``) sending to ``rig``'s service, built with ``rig``'s options."""
    tag = f"cmcrt-{os.getpid()}-{next(_rig_numbers)}"
    network = Network(tag, rig.settings.host_name, join=rig.network, number=number)
    stack.callback(network.destroy)
    root.mkdir(mode=0o755)
    return _relay(
        stack, root, network, rig.settings, rig.options, secrets, rig.standin, rig.upstream,
        rig.api_key, network.relay_ip, rig.trusted_ca,
    )  # fmt: skip


def _relay(
    stack: contextlib.ExitStack,
    root: Path,
    network: Network,
    settings: RelaySettings,
    options: RigOptions,
    secrets: Secrets,
    standin: StandInProcess,
    upstream: Dnsmasq,
    api_key: str,
    seen_as: str,
    trusted_ca: Path,
) -> Rig:
    """The relay host's side of a rig: its DNS cache, credentials and Postfix."""
    cache = dns_cache(network, root, settings)
    stack.callback(cache.stop)
    postfix = Postfix(network, root)
    if options.spool_size is not None:
        postfix.queue_dir.mkdir()
        run("mount", "-t", "tmpfs", "-o", f"size={options.spool_size}", "tmpfs", postfix.queue_dir)
        stack.callback(run, "umount", postfix.queue_dir)  # once Postfix has stopped
    arn = None
    if settings.uses_sasl:
        arn = secrets.create(f"{network.relay}-smtp", options.api_key or api_key)
    configure_postfix(postfix, settings, arn, trusted_ca, options.main_cf)
    credentials = None
    if arn is not None:
        env_file = postfix.stage_dir / "relay.env"
        credentials = Credentials(secrets, arn, env_file, postfix.config_dir)
        credentials.install()  # before the start, as cmc-relay-setup does
    stack.callback(postfix.stop)
    postfix.start()
    return Rig(
        settings, network, upstream, cache, standin, postfix, api_key, credentials, options,
        seen_as, trusted_ca,
    )  # fmt: skip


@contextlib.contextmanager
def rig_directory(artifacts: Path) -> Iterator[Path]:
    """A root-owned 0755 directory for one rig (Postfix's daemons, running as ``postfix``, must
    traverse it, which pytest's 0700 tmp_path forbids); logs and events are copied to
    ``artifacts`` when it goes."""
    root = Path(f"/tmp/cmcrt-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    root.mkdir(mode=0o755)
    try:
        yield root
    finally:
        artifacts.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            with contextlib.suppress(OSError):
                shutil.copy(root / name, artifacts / name.replace("/", "-"))
        shutil.rmtree(root, ignore_errors=True)
