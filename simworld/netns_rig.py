"""The rendered relay on real Postfix and dnsmasq, in network namespaces, against the stand-in.

Two namespaces joined by a veth pair stand for the relay host and the internet::

    relay ns    cmc0  198.51.100.2/24   the relay's sending address (its Elastic IP)
                      192.0.2.10        a client inside allowedCidrs (192.0.2.0/26)
                      192.0.2.11        another client inside it (per-client limits)
                      192.0.2.200       a client outside it
                lo    127.0.0.1         dnsmasq cache (rendered dnsmasq.conf, G13)
                Postfix (Debian's stock config + the rendered parameters) on *:25
                /etc/resolv.conf = nameserver 127.0.0.1, then the upstream (G14)
    service ns  cmc0  198.51.100.1/24
                      198.51.100.53     upstream DNS: the SMTP host name -> 3 addresses
                      203.0.113.10-12   the SMTP host's round robin: one stand-in, port 10025

The relay namespace's /etc/resolv.conf and /etc/hosts are ``ip netns exec``'s bind mounts
from /etc/netns/NAME/, created and removed here; the machine's own files are never touched.
Only loopback (moto, for the fetch script) and addresses inside these namespaces see traffic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import boto3
from moto.server import ThreadedMotoServer

from cmc_relay.userdata.render import (
    SCRIPT_DIR,
    STAGE_DIR,
    parse_main_cf,
    render_template,
    write_files,
)
from cmc_relay.userdata.settings import RelaySettings
from simworld.standin import (
    Event,
    MessageRecord,
    StandInConfig,
    Stats,
    messages_from_events,
    read_events,
    stats_from_events,
)
from simworld.standin import tls as standin_tls

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

T = TypeVar("T")

REPO: Final = Path(__file__).resolve().parents[1]
SCRIPTS: Final = REPO / "userdata" / "scripts"
FETCH_SECRET: Final = SCRIPTS / "cmc-relay-fetch-secret"
INBOUND_CERT: Final = SCRIPTS / "cmc-relay-inbound-cert"
SETUP: Final = SCRIPTS / "cmc-relay-setup"
SMTP_CLIENT: Final = Path(__file__).with_name("smtp_client.py")
WIRE_TAP: Final = Path(__file__).with_name("wire_tap.py")
DELAY_PROXY: Final = Path(__file__).with_name("delay_proxy.py")

# Debian 12's postfix package: its stock config and the chroot sync its init and unit run.
DEBIAN_MAIN_CF: Final = (
    Path("/usr/share/postfix/main.cf.debian"),
    Path("/usr/share/postfix/main.cf.tls"),
)
DEBIAN_MASTER_CF: Final = Path("/usr/share/postfix/master.cf.dist")
CONFIGURE_INSTANCE: Final = Path("/usr/lib/postfix/configure-instance.sh")
# What Debian's postinst adds to main.cf for "Internet Site", the installer's default answer,
# beyond what the rendered parameters set anyway (myhostname, mydestination, mynetworks).
DEBIAN_INTERNET_SITE: Final = {
    "smtpd_relay_restrictions": (
        "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"
    ),
    "alias_maps": "hash:/etc/aliases",
    "alias_database": "hash:/etc/aliases",
    "relayhost": "",
    "mailbox_size_limit": "0",
    "recipient_delimiter": "+",
    "inet_interfaces": "all",
    "inet_protocols": "all",
}
REQUIRED_FILES: Final = (*DEBIAN_MAIN_CF, DEBIAN_MASTER_CF, CONFIGURE_INSTANCE)
REQUIRED_BINARIES: Final = (
    "ip", "postfix", "postconf", "postmap", "postalias", "postqueue", "dnsmasq",
)  # fmt: skip

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
API_USER: Final = "cmc-api-user"
AWS_REGION: Final = "ap-northeast-1"

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


def run(*cmd: str | Path, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a failure raises with its output in the message."""
    args = [str(c) for c in cmd]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return result


def wait_until(
    ready: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``ready`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout} s")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: this one process, by its PID."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- network


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
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)


# --------------------------------------------------------------------------- DNS


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
    conf.write_text(render_template("dnsmasq.conf", settings))
    return Dnsmasq(network, network.relay, root / "dnsmasq-cache.log", [f"--conf-file={conf}"])


# --------------------------------------------------------------------------- stand-in


class StandInProcess:
    """``python -m simworld.standin`` in the service namespace, controlled over its stdin."""

    def __init__(self, network: Network, root: Path, config: StandInConfig) -> None:
        self.events_path = root / "standin-events.jsonl"
        self.is_down = False
        self._read_to = self._delivered = 0
        config_path = root / "standin.json"
        config_path.write_text(json.dumps(config.to_dict()))
        command = network.exec(
            network.service, sys.executable, "-m", "simworld.standin", "--config", config_path,
            "--events", self.events_path, "--control-stdin",
        )  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            line = self._next_line(30)
            while not line.startswith("CAFILE "):
                line = self._next_line(30)
        except BaseException:
            self.stop()
            raise
        self.ca_path = Path(line.split(" ", 1)[1])

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def _next_line(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"stand-in said nothing within {timeout} s") from None

    def command(self, op: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        reply = self._next_line(15)
        if reply != f"OK {op}":
            raise RuntimeError(f"stand-in {op}: {reply}")

    def reconfigure(self, **changes: Any) -> None:
        self.command("reconfigure", changes=changes)

    def down(self) -> None:
        self.command("down")
        self.is_down = True

    def up(self) -> None:
        self.command("up")
        self.is_down = False

    def events(self) -> list[Event]:
        return read_events(self.events_path)

    def stats(self) -> Stats:
        return stats_from_events(self.events())

    def messages(self) -> list[MessageRecord]:
        return messages_from_events(self.events())

    def delivered(self) -> int:
        """How many messages were accepted so far, reading the events file on from where the
        last call stopped: a long run's file is too big to parse at every poll."""
        with self.events_path.open("rb") as events:
            events.seek(self._read_to)
            chunk = events.read()
        whole = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._delivered += chunk.count(b'{"event": "message"', 0, whole)
        self._read_to += whole
        return self._delivered

    def stop(self) -> None:
        stop_process(self.process)


# --------------------------------------------------------------------------- Postfix


@dataclass(frozen=True)
class Delivery:
    """One ``to=<…>, relay=…, status=…`` line of the mail log."""

    queue_id: str
    recipient: str
    relay: str
    status: str
    detail: str


_DELIVERY = re.compile(
    r": (?P<qid>\w+): to=<(?P<to>[^>]*)>,(?: orig_to=<[^>]*>,)? relay=(?P<relay>[^,]+), "
    r".*? status=(?P<status>\w+) \((?P<detail>.*)\)$"
)
_MESSAGE_ID = re.compile(r": (?P<qid>\w+): message-id=(?P<mid>\S+)")


class Postfix:
    """One Postfix instance: private config, queue and data directories, in the relay ns."""

    def __init__(self, network: Network, root: Path) -> None:
        self.network = network
        self.config_dir = root / "postfix"
        self.stage_dir = root / "stage"
        """The payload's staged files, as in /etc/cmc-relay."""
        self.script_dir = root / "sbin"
        """The shipped scripts the payload has, as in /usr/local/sbin."""
        self.queue_dir = root / "spool"
        self.data_dir = root / "data"
        self.mail_spool = root / "mail"
        self.maillog = root / "maillog"

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(*self.network.exec(self.network.relay, *args))

    def start(self) -> None:
        # Debian's unit runs this before every start: it copies the namespace's resolv.conf
        # (and hosts, CA dir, NSS libraries) into the chroot the smtp client runs in.
        self.command("env", f"MAIL_CONFIG={self.config_dir}", str(CONFIGURE_INSTANCE))
        try:
            self.command("postfix", "-c", str(self.config_dir), "start")
        except RuntimeError as error:  # the reason is in the mail log
            raise RuntimeError(f"{error}\n{self.log()[-3000:]}") from None

    def stop(self) -> None:
        if (self.queue_dir / "pid" / "master.pid").exists():
            subprocess.run(
                self.network.exec(self.network.relay, "postfix", "-c", self.config_dir, "stop"),
                capture_output=True,
                check=False,
                timeout=60,
            )

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        run("postqueue", "-c", self.config_dir, "-f")

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one object per queued message (queue_name, recipients, …)."""
        out = run("postqueue", "-c", self.config_dir, "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queued(self, queue_name: str) -> int:
        """How many messages are in one of the queues (``hold``, ``deferred``, …)."""
        return sum(entry["queue_name"] == queue_name for entry in self.queue())

    def wait_for_empty_queue(self, timeout: float = 60) -> None:
        try:
            wait_until(lambda: not self.queue(), timeout, "an empty queue", interval=0.25)
        except TimeoutError:
            queued = self.queue()
            reasons = {r.get("delay_reason", "") for q in queued for r in q["recipients"]}
            raise TimeoutError(
                f"Postfix still holds {len(queued)} messages after {timeout} s: {reasons}"
            ) from None

    def log(self) -> str:
        return self.maillog.read_text() if self.maillog.exists() else ""

    def deliveries(self) -> list[Delivery]:
        return [
            Delivery(m["qid"], m["to"], m["relay"], m["status"], m["detail"])
            for m in map(_DELIVERY.search, self.log().splitlines())
            if m
        ]

    def queue_ids(self, message_id: str) -> set[str]:
        """Queue IDs Postfix gave the message with this Message-ID."""
        return {
            m["qid"]
            for m in map(_MESSAGE_ID.search, self.log().splitlines())
            if m and m["mid"] == message_id
        }

    def deliveries_of(self, message_id: str) -> list[Delivery]:
        ids = self.queue_ids(message_id)
        return [d for d in self.deliveries() if d.queue_id in ids]

    def first_attempt(self, message_id: str, timeout: float = 60) -> Delivery:
        """The outcome of the message's first delivery attempt, once logged."""
        return wait_until(
            lambda: next(iter(self.deliveries_of(message_id)), None),
            timeout,
            f"a delivery attempt for {message_id}",
        )


def configure_postfix(
    postfix: Postfix,
    settings: RelaySettings,
    secret_arn: str | None,
    ca_file: Path,
    main_cf: Mapping[str, str | None] | None = None,
) -> None:
    """Turn settings into the rig's Postfix config: the one path every test takes.

    As on the host: Debian's stock main.cf (main.cf.debian + main.cf.tls, plus what its postinst
    adds for "Internet Site") and master.cf, its aliases, then the payload staged as cloud-init
    stages it (relay.env, main.cf, master.cf, the lookup tables; ``write_files``) and applied by
    the shipped cmc-relay-setup's ``configure_postfix`` step, pointed at the rig's directories:
    ``postconf -e``, ``postconf -M``, the tables installed, ``postmap`` (G5), and the inbound
    STARTTLS certificate made by cmc-relay-inbound-cert when the payload ships it.

    ``main_cf`` changes the rendered parameters (benchmarks compare against Postfix's stock
    settings): a value replaces or adds one, None drops it so Postfix's default applies.

    Rig overrides in the staged main.cf, and nothing else:

    - ``config_directory``, ``queue_directory``, ``data_directory``: private to this rig.
    - ``/etc/postfix/`` in rendered values (transport, relay_password, reply filter) ->
      the private config directory.
    - ``alias_maps``, ``alias_database``: a private copy of postinst's ``hash:/etc/aliases``.
    - ``mail_spool_directory``: private, instead of /var/mail (local delivery is checked there).
    - ``maillog_file``: the rig's own file instead of the host's /var/log/cmc-relay/mail.log
      (``maillog_file_prefixes`` widened to allow it).
    - ``smtp_tls_CAfile``: the rig's test CA instead of the OS bundle (``Rig.trusted_ca``).

    master.cf stays Debian's: smtpd listens on *:25, confined by the namespace; smtp runs
    chrooted, and ``Postfix.start`` syncs the chroot as Debian does.
    """
    root = postfix.config_dir.parent
    conf = postfix.config_dir
    for directory in (conf, postfix.queue_dir, postfix.data_dir):
        directory.mkdir(exist_ok=directory == postfix.queue_dir)  # it may be a mount point
    shutil.chown(postfix.data_dir, "postfix")  # as Debian's package owns /var/lib/postfix
    postfix.mail_spool.mkdir()
    postfix.mail_spool.chmod(0o1777)  # like /var/mail: local(8) creates mailboxes in it
    (conf / "main.cf").write_text("".join(p.read_text() for p in DEBIAN_MAIN_CF))
    shutil.copyfile(DEBIAN_MASTER_CF, conf / "master.cf")
    installer = (f"{name}={value}" for name, value in DEBIAN_INTERNET_SITE.items())
    run("postconf", "-c", conf, "-e", *installer)
    (conf / "aliases").write_text("postmaster: root\n")
    run("postalias", "-c", conf, conf / "aliases")
    payload = {file["path"]: file["content"] for file in write_files(settings, secret_arn)}
    changed = {**parse_main_cf(payload[f"{STAGE_DIR}/main.cf"]), **(main_cf or {})}
    rendered = {
        name: value.replace("/etc/postfix/", f"{conf}/")
        for name, value in changed.items()
        if value is not None
    }
    overrides = {
        "config_directory": str(conf),
        "queue_directory": str(postfix.queue_dir),
        "data_directory": str(postfix.data_dir),
        "alias_maps": f"hash:{conf}/aliases",
        "alias_database": f"hash:{conf}/aliases",
        "mail_spool_directory": str(postfix.mail_spool),
        "maillog_file": str(postfix.maillog),
        "maillog_file_prefixes": f"/var, /dev/stdout, {root}",
        "smtp_tls_CAfile": str(ca_file),
    }
    payload[f"{STAGE_DIR}/main.cf"] = "".join(
        f"{name} = {value}\n" for name, value in {**rendered, **overrides}.items()
    )
    postfix.script_dir.mkdir()
    for path, content in payload.items():
        folder, _, name = path.rpartition("/")
        if path.startswith(f"{STAGE_DIR}/"):
            staged = postfix.stage_dir / path.removeprefix(f"{STAGE_DIR}/")
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(content)
        elif folder == SCRIPT_DIR and (SCRIPTS / name).exists():
            # Where the setup looks for the scripts it calls: those the payload ships.
            (postfix.script_dir / name).symlink_to(SCRIPTS / name)
    env = {
        **os.environ,
        "MAIL_CONFIG": str(conf),
        "CMC_RELAY_STAGE_DIR": str(postfix.stage_dir),
        "CMC_RELAY_SCRIPT_DIR": str(postfix.script_dir),
    }
    run("bash", SETUP, "configure_postfix", env=env)
    run("postfix", "-c", conf, "check")


# --------------------------------------------------------------------------- mail


@dataclass(frozen=True)
class Mail:
    """A test message with a unique Message-ID and body."""

    recipient: str
    message_id: str
    data: str
    sender: str = "app@client.example"

    @property
    def body_sha256(self) -> str:
        """As the stand-in computes it: the bytes after the header block."""
        return hashlib.sha256(self.data.partition("\r\n\r\n")[2].encode()).hexdigest()


def new_mail(
    recipient: str = "user@example.com",
    *,
    padding: int = 0,
    sender: str = Mail.sender,
    from_header: str | None = None,
    sender_header: str | None = None,
) -> Mail:
    """A message from ``sender`` (envelope; "" is the null sender of bounces), with a From:
    header of ``<sender>`` unless ``from_header`` is given, and a Sender: header if given."""
    token = uuid.uuid4().hex
    message_id = f"<{token}@cmcrt.test>"
    body = f"cmc relay integration test {token}\r\n" + ("x" * 76 + "\r\n") * (padding // 78)
    headers = {"From": from_header or f"<{sender}>", "Sender": sender_header}
    data = "".join(f"{name}: {value}\r\n" for name, value in headers.items() if value) + (
        f"To: <{recipient}>\r\nSubject: relay test\r\nMessage-ID: {message_id}\r\n\r\n{body}"
    )
    return Mail(recipient, message_id, data, sender)


def new_mails(count: int, recipient: str = "user@example.com") -> list[Mail]:
    return [new_mail(recipient) for _ in range(count)]


@dataclass(frozen=True)
class Reply:
    """The relay's final answer to one submitted message."""

    stage: str
    code: int
    text: str
    tls: str | None = None
    """With ``starttls``: the TLS version the session negotiated."""
    tls_cert_sha256: str | None = None
    """With ``starttls``: the SHA-256 of the certificate the relay offered (DER, hex)."""

    @property
    def accepted(self) -> bool:
        return self.stage == "data" and self.code == 250


# --------------------------------------------------------------------------- the rig


@dataclass
class WireCount:
    """The relay's connections to the service, seen on the wire (see ``wire_tap``)."""

    connections: int = 0
    peak_open: int = 0


@dataclass
class Credentials:
    """The API key's way to Postfix: a secret in Secrets Manager (moto), the rendered relay.env
    naming it, and the real cmc-relay-fetch-secret writing the password table from it."""

    secrets: Secrets
    arn: str
    env_file: Path
    config_dir: Path

    def store(self, api_key: str) -> None:
        self.secrets.update(self.arn, api_key)

    def install(self) -> subprocess.CompletedProcess[str]:
        return self.secrets.fetch(self.env_file, self.config_dir)


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


class Secrets:
    """Secrets Manager (moto, on loopback in the root namespace) for the fetch script."""

    def __init__(self, endpoint: str, client: SecretsManagerClient) -> None:
        self.endpoint = endpoint
        self.client = client

    def create(self, name: str, password: str) -> str:
        secret = json.dumps({"username": API_USER, "password": password})
        return self.client.create_secret(Name=name, SecretString=secret)["ARN"]

    def update(self, arn: str, password: str) -> None:
        secret = json.dumps({"username": API_USER, "password": password})
        self.client.put_secret_value(SecretId=arn, SecretString=secret)

    def fetch(self, env_file: Path, config_dir: Path) -> subprocess.CompletedProcess[str]:
        """The real cmc-relay-fetch-secret (with the venv's boto3) writing the table."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        return run(
            sys.executable, FETCH_SECRET, "--env-file", env_file,
            "--postfix-config-dir", config_dir, "--max-wait", "10",
            env=env,
        )  # fmt: skip


@contextlib.contextmanager
def moto_on_loopback() -> Iterator[str]:
    """moto's server (every AWS API) on loopback, port picked by the OS, for as long as the
    block runs: its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def secrets_service() -> Iterator[Secrets]:
    """moto's Secrets Manager on loopback, for as long as the block runs."""
    with moto_on_loopback() as endpoint:
        client = boto3.client(
            "secretsmanager",
            region_name=AWS_REGION,
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        yield Secrets(endpoint, client)


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
