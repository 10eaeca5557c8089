"""The relay host booted locally: the network around it, real cloud-init, mail through it.

One ``Sandbox`` is one throwaway machine (``simworld.throwaway.Rig``) wired like this, all
inside its private network namespace::

    eth0   10.0.1.10/24        the relay host's NIC (Postfix listens on all addresses)
    world0 10.0.1.50           an application server in allowedCidrs (submits mail)
           192.0.2.50          a host outside allowedCidrs (must be refused)
           198.51.100.25, .26  the CMC stand-in, both A records of sandbox.smtps.jp
           169.254.169.253     the "VPC resolver": a dnsmasq that knows sandbox.smtps.jp
           203.0.113.10:4566   Secrets Manager and S3 (moto's server) holding the SMTP
                               credentials and the bundle of on-host scripts

The relay's own dnsmasq, rendered by the payload, listens on 127.0.0.1 and forwards to the
"VPC resolver", exactly as on EC2. Nothing leaves the namespace: there is no route out.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.render import (
    MAIL_LOG,
    POINTER_KEY,
    BundleStore,
    pack_user_data,
    render_bundle,
    render_user_data,
)
from cmc_relay.userdata.settings import RelaySettings
from simworld.standin import MessageRecord, messages_from_events, read_events
from simworld.throwaway import BASE_ENV, Rig, RigError, Unsupported

REPO = Path(__file__).resolve().parents[1]
ALLOWED_CIDR = "10.0.1.0/24"
RELAY_IP = "10.0.1.10"
CLIENT_IP = "10.0.1.50"
OUTSIDER_IP = "192.0.2.50"
CMC_IPS = ("198.51.100.25", "198.51.100.26")
RESOLVER_IP = "169.254.169.253"
AWS_IP, AWS_PORT, REGION = "203.0.113.10", 4566, "ap-northeast-1"
API_USER = "sandbox-api-user"
SECRET_NAME = "cmc-relay-sandbox-credentials"
BUNDLE_STORE = BundleStore("cmc-relay-sandbox-payload", REGION)
# The payload `pulumi up` would render for a trial-plan Debian 12 host serving ALLOWED_CIDR.
# With the mail policy, so that the verifier's tests cover its settings and tables too.
SETTINGS = RelaySettings(
    allowed_cidrs=(ALLOWED_CIDR,),
    os="debian-12",
    sender_domain="example.com",
    allowed_sender_domains=("example.com", "example.test"),
    operator_email="relay-ops@example.com",
)

# How the boot reaches the emulator: cloud-init's own environment, which runcmd (the setup
# script, then the fetch script) inherits. Only the sandbox sets it; nothing is written to disk.
BOOT_ENV: Mapping[str, str] = {
    **BASE_ENV,
    "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://{AWS_IP}:{AWS_PORT}",
    "AWS_ENDPOINT_URL_S3": f"http://{AWS_IP}:{AWS_PORT}",
    "AWS_ACCESS_KEY_ID": "sandbox",  # moto accepts any; stands in for the instance role
    "AWS_SECRET_ACCESS_KEY": "sandbox",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Processes of the world run the repository's code with this interpreter (the venv).
WORLD_ENV: Mapping[str, str] = {**BASE_ENV, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}

CLOUD_CFG = """\
# Written by the local sandbox (python -m sandbox) into its throwaway overlay only.
datasource_list: [NoCloud, None]  # the seed is on disk; probe no metadata service
network: {config: disabled}       # the sandbox wires eth0 itself
locale: C.UTF-8                   # this machine may lack the en_US locale an image has
ssh_genkeytypes: [ed25519]        # host keys mean nothing here; RSA would cost seconds
"""
# Every change the sandbox makes to the overlay before booting it, as the report lists them.
OVERLAY_CHANGES = (
    "apt sources emptied: package_update succeeds offline and the payload's packages, "
    "installed on this machine, are no-ops",
    "cloud.cfg.d/99-cmc-sandbox.cfg: NoCloud seed only, no network config, locale C.UTF-8, "
    "only an ed25519 SSH host key",
    f"/etc/resolv.conf names {RESOLVER_IP} (the stand-in VPC resolver), as DHCP would",
    "the stand-in's test CA appended to the OS bundle smtp_tls_CAfile names",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER, AWS_ENDPOINT_URL_S3 and dummy credentials in "
    "cloud-init's environment",
    "/dev/log is a socket the sandbox records (no syslog daemon)",
)
STAGES: tuple[tuple[str, ...], ...] = (
    ("init", "--local"),
    ("init",),
    ("modules", "--mode", "config"),
    ("modules", "--mode", "final"),
)


@dataclass(frozen=True)
class Stage:
    """One cloud-init stage as it ran: its arguments, exit code and duration."""

    command: str
    returncode: int
    seconds: float


class Sandbox:
    """The relay host and its world; use as a context manager so teardown always runs."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.rig: Rig | None = None
        self.secret_arn = ""
        self.ca_pem = ""

    def open(self) -> None:
        """The namespaces and the overlay; raises ``Unsupported`` where they cannot exist."""
        self.rig = Rig()

    def __enter__(self) -> Sandbox:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def machine(self) -> Rig:
        if self.rig is None:
            raise RigError("the sandbox is not open")
        return self.rig

    def close(self) -> list[int]:
        """Tear down; returns pids that were still in the namespaces afterwards (none)."""
        rig, self.rig = self.rig, None
        return rig.close() if rig else []

    # --- the world ------------------------------------------------------------------------

    def wire_network(self) -> None:
        world = [f"ip addr add {ip}/32 dev world0" for ip in (CLIENT_IP, OUTSIDER_IP)]
        world += [f"ip addr add {ip}/32 dev world0" for ip in (*CMC_IPS, RESOLVER_IP, AWS_IP)]
        rig = self.machine
        veth = ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "world0"]
        if (made := rig.run(veth, chroot=False, check=False)).returncode:
            raise Unsupported(f"cannot create a veth pair: {made.stderr.strip()}")
        script = [
            "set -e",
            "ip link set lo up",
            f"ip addr add {RELAY_IP}/24 dev eth0",
            *world,
            "ip link set eth0 up",
            "ip link set world0 up",
        ]
        rig.run(["sh", "-c", "\n".join(script)], chroot=False)

    def start_syslog(self) -> None:
        rig = self.machine
        agent = [sys.executable, "-m", "simworld.agents", "syslog", f"{rig.root}/dev/log"]
        process = rig.start([*agent, f"{rig.world}/syslog"], log="syslog.log", env=WORLD_ENV)
        rig.await_output(process, "syslog.log", "^READY")

    def start_secrets_manager(self) -> str:
        """Moto's server holding ``{"username", "password"}`` and the bundle of on-host scripts
        in BUNDLE_STORE; returns the secret's ARN."""
        rig = self.machine
        aws = [sys.executable, "-m", "simworld.agents", "aws", "--host", AWS_IP]
        aws += ["--port", str(AWS_PORT), "--region", REGION, "--name", SECRET_NAME]
        process = rig.start(aws, log="aws.log", env=WORLD_ENV, stdin=subprocess.PIPE)
        assert process.stdin is not None
        # The value travels on a pipe, never as an argument.
        process.stdin.write(json.dumps({"username": API_USER, "password": self.password}) + "\n")
        process.stdin.flush()
        self.secret_arn = rig.await_output(process, "aws.log", r"^ARN (\S+)").group(1)
        # The bundle holds the secret's ARN: stored once it is known, then its pointer.
        bundle = render_bundle(SETTINGS, self.secret_arn)
        for key, content in ((bundle.key, bundle.data), (POINTER_KEY, bundle.pointer.encode())):
            name = key.replace("/", "-")
            Path(rig.host_path(name)).write_bytes(content)
            put = {"s3_object": f"{BUNDLE_STORE.bucket}/{key}={rig.world}/{name}"}
            process.stdin.write(json.dumps(put) + "\n")
            process.stdin.flush()
            rig.await_output(process, "aws.log", rf"^PUT {re.escape(BUNDLE_STORE.bucket)}/{key}")
        process.stdin.close()
        return self.secret_arn

    def start_resolver(self) -> None:
        """The VPC resolver's stand-in, answering the service's host name round robin."""
        rig, host = self.machine, SETTINGS.relay_host
        dnsmasq = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv"]
        dnsmasq += ["--no-hosts", "--bind-interfaces", f"--listen-address={RESOLVER_IP}"]
        dnsmasq += [f"--pid-file={rig.world}/resolver.pid", "--log-facility=-", "--log-queries"]
        dnsmasq += [f"--host-record={host},{ip}" for ip in CMC_IPS]
        rig.await_output(rig.start(dnsmasq, log="resolver.log"), "resolver.log", "started, version")

    def start_standin(self) -> str:
        """The CMC stand-in on port 10025 of both addresses; returns its test CA (PEM)."""
        rig = self.machine
        Path(rig.host_path("tls")).mkdir()
        config = {
            "hosts": list(CMC_IPS),
            "port": SETTINGS.smtp_port,
            "hostname": SETTINGS.relay_host,
            "tls_dir": f"{rig.world}/tls",
            "users": {API_USER: self.password},
        }
        config_path = Path(rig.host_path("standin.json"))
        config_path.touch(mode=0o600)
        config_path.write_text(json.dumps(config))
        standin = [sys.executable, "-m", "simworld.standin"]
        standin += ["--config", f"{rig.world}/standin.json"]
        standin += ["--events", f"{rig.world}/standin-events.jsonl"]
        process = rig.start(standin, log="standin.log", env=WORLD_ENV)
        ca_file = rig.await_output(process, "standin.log", r"^CAFILE \S+/world/(\S+)").group(1)
        self.ca_pem = Path(rig.host_path(ca_file)).read_text()
        return self.ca_pem

    # --- the relay host -------------------------------------------------------------------

    def render(self) -> tuple[str, bytes]:
        """The user data, rendered and packed by the very functions the Pulumi component uses:
        the document, and the gzipped bytes EC2 would hand to cloud-init."""
        document = render_user_data(SETTINGS, store=BUNDLE_STORE)
        return document, base64.b64decode(pack_user_data(document))

    def prepare_overlay(self, user_data: bytes) -> None:
        """Seed cloud-init and make the changes OVERLAY_CHANGES lists (the overlay only)."""
        rig = self.machine
        prepare = [
            "set -e",
            "rm -rf /var/lib/cloud /etc/cloud/cloud-init.disabled",
            "rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/*",
            "rm -f /etc/resolv.conf",
            f"echo 'nameserver {RESOLVER_IP}' >/etc/resolv.conf",
        ]
        rig.run(["sh", "-c", "\n".join(prepare)])
        rig.write("/etc/cloud/cloud.cfg.d/99-cmc-sandbox.cfg", CLOUD_CFG)
        bundle = OS_PROFILES[SETTINGS.os].ca_file
        rig.write(bundle, rig.read(bundle) + self.ca_pem)
        seed = "/var/lib/cloud/seed/nocloud"
        rig.write(f"{seed}/meta-data", f"instance-id: cmc-sandbox-{rig.pid}\n")
        rig.write(f"{seed}/user-data", user_data, mode="0600")

    def boot(self) -> Iterator[Stage]:
        """cloud-init's four boot stages, in the order systemd runs them, each as it ends."""
        for stage in STAGES:
            started = time.monotonic()
            result = self.machine.run(
                ["cloud-init", *stage], env=BOOT_ENV, timeout=600, check=False
            )
            yield Stage(" ".join(stage), result.returncode, time.monotonic() - started)

    def cloud_init_status(self) -> str:
        return self.machine.run(["cloud-init", "status", "--long"], check=False).stdout.strip()

    def submit(self, source: str, message_id: str) -> dict[str, Any]:
        """One message from ``source`` to the relay's port 25; the relay's reply."""
        client = [sys.executable, "-m", "simworld.agents", "submit", "--source", source]
        client += ["--server", RELAY_IP, "--mail-from", "app@example.test"]
        client += ["--rcpt", "someone@example.com", "--message-id", message_id]
        out = self.machine.run(client, chroot=False, env=WORLD_ENV).stdout
        reply: dict[str, Any] = json.loads(out)
        return reply

    def wait_for_message(self, message_id: str, timeout: float = 30) -> MessageRecord:
        """The stand-in's record of the message, once the relay has delivered it."""
        events = self.machine.host_path("standin-events.jsonl")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in messages_from_events(read_events(events)):
                if record.message_id == message_id:
                    return record
            time.sleep(0.2)
        raise RigError(f"{message_id} did not reach the stand-in within {timeout:g}s")

    def verify(self, *skip: str) -> tuple[int, dict[str, Any]]:
        """The on-host verifier, run on the relay host: exit code and report."""
        options = [f"--skip={name}" for name in skip]
        result = self.machine.run(["cmc-relay-verify", *options], check=False)
        report: dict[str, Any] = json.loads(result.stdout)
        return result.returncode, report

    def mail_log(self) -> str:
        """Postfix's log on the relay (maillog_file)."""
        return self.machine.run(["cat", MAIL_LOG], check=False).stdout

    # --- the secret -----------------------------------------------------------------------

    def secret_leaks(self) -> tuple[list[str], int]:
        """Where the password shows up: captured outputs, logs (the world's and the relay's,
        cloud-init's included) and every process's arguments and environment. Returns the
        places it was found and how many places were searched."""
        rig = self.machine
        places = {f"output #{n}": text for n, text in enumerate(rig.transcript)}
        for path in sorted(Path(rig.host_path("")).glob("*")):
            if path.is_file() and path.name != "standin.json":  # the stand-in's user table
                places[f"world/{path.name}"] = path.read_text(errors="replace")
        for pid, (argv, env) in rig.processes_inside().items():
            places[f"pid {pid} arguments"], places[f"pid {pid} environment"] = argv, env
        found = [place for place, text in places.items() if self.password in text]
        # The relay's logs, searched in place; the pattern goes on stdin, not in grep's argv.
        dirs = ["/var/log", "/var/lib/cloud", "/run/cloud-init", "/etc/cmc-relay"]
        grep = rig.run(["grep", "-rlF", "-f", "-", *dirs], input=self.password, check=False)
        found += [f"relay {path}" for path in grep.stdout.split()]
        return found, len(places) + len(dirs)
