"""One twin boot from start to teardown: the world, the payload, systemd, cloud-init, mail.

``TwinBoot`` is what the sandbox, the twin tests and the benchmarks use. Each step is a method,
so a caller can show stages as they happen; ``close`` (or leaving the ``with`` block) always
stops the twin and the world and removes the overlay, also after a failure. A stack's host can
be replaced: ``stop`` it (EC2's stop), ``next_instance``, then ``prepare`` and boot again: a new
instance of the same stack (same payload and pointer) with its own id, MAC and address.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cmc_relay.components.host import HOST_INDEX_TAG
from cmc_relay.userdata.metrics import DEFAULT_MONITORING
from cmc_relay.userdata.render import (
    POINTER_KEY,
    Bundle,
    BundleStore,
    pack_user_data,
    render_bundle,
    render_user_data,
)
from cmc_relay.userdata.settings import RelaySettings
from simworld.alarm_check import Series
from simworld.rig.process import REPO, wait_until
from simworld.standin import MessageRecord
from simworld.twin import world as net
from simworld.twin.aws_agents import VERSION, AgentPackages, agent_packages, pins
from simworld.twin.build import ARCH, Twin, build, cache_dir
from simworld.twin.images import TWINS
from simworld.twin.machine import BootError, Machine, descendants

API_USER: Final = "twin-api-user"
SECRET_NAME: Final = "cmc-relay-twin-credentials"
ACCOUNT_ID: Final = "123456789012"
ROLE: Final = "cmc-relay-twin-role"
CA_NAME: Final = "cmc-twin-test-ca.crt"
SSM_BUCKET: Final = f"amazon-ssm-{net.REGION}"
CLOUDWATCH_BUCKET: Final = f"amazoncloudwatch-agent-{net.REGION}"
CLOUDWATCH_KEY: Final = "amazoncloudwatch-agent/assets/amazon-cloudwatch-agent.gpg"  # global
PAYLOAD_STORE: Final = BundleStore(net.PAYLOAD_BUCKET, net.REGION)

# cloud-init in a container reads no DMI, so it cannot tell it is on EC2: it is told.
CLOUD_CFG: Final = """\
# cmc-relay image twin (systemd-nspawn): cloud-init cannot read DMI in a container, so it
# would not identify EC2. Only the Ec2 datasource, and no strict platform check.
datasource_list: [Ec2, None]
datasource:
  Ec2:
    strict_id: false
# On EC2 the Ec2Local datasource renders the network config before the network is up, with
# nothing to activate; here the datasource comes a stage later, after the fallback config
# brought the NIC up, and must not re-activate it (netplan apply needs udev).
disable_network_activation: true
"""
# netplan matches the NIC by PermanentMACAddress, which a veth does not have.
NIC_MATCH: Final = """\
# cmc-relay image twin: a veth has no permanent MAC address; match netplan's NIC by its MAC.
[Match]
PermanentMACAddress=
MACAddress={mac}
"""
# udev does not run in a container; cloud-init and netplan ask it to reload and re-trigger.
UDEVADM: Final = """\
#!/bin/sh
# cmc-relay image twin: udev does not run in a container, so what asks it to reload rules,
# re-trigger, settle or apply .link files (netplan, cloud-init) gets a no-op; the rest is
# udevadm's.
case "$1" in control|trigger|settle|test-builtin) exit 0 ;; esac
exec /usr/bin/udevadm "$@"
"""
# A container's systemd ignores fstab's device entries and no udev makes the volume's node: at
# a reboot the twin makes the node and mounts it itself, where fstab's entry mounts it on EC2.
QUEUE_MOUNT_UNIT: Final = "var-spool-postfix.mount"
QUEUE_MOUNT: Final = {
    "cmc-twin-queue-device.service": """\
# cmc-relay image twin: the queue volume's device node (no udev in a container).
[Unit]
DefaultDependencies=no
ConditionPathExists=!{device}
[Service]
Type=oneshot
ExecStart=/usr/bin/mknod -m 0660 {device} b {major} {minor}
""",
    QUEUE_MOUNT_UNIT: """\
# cmc-relay image twin: fstab's LABEL=cmc-relay-queue entry, which systemd ignores in a container.
[Unit]
Requires=cmc-twin-queue-device.service
After=cmc-twin-queue-device.service
[Mount]
What={device}
Where=/var/spool/postfix
Type=ext4
Options=defaults
""",
}
# Every way the twin's boot differs from an EC2 instance's, as the report lists them.
DEVIATIONS: Final = (
    "systemd-nspawn container, not a VM: no kernel, bootloader or udev of the image; the NIC "
    "is a veth named ens5",
    "cloud-init cannot read DMI in a container: /etc/cloud/cloud.cfg.d/90-cmc-twin.cfg names "
    "the Ec2 datasource and turns its strict platform check off",
    "so cloud-init reads the metadata service without an IMDSv2 token (the stand-in answers "
    "it; the role's credentials still need a token, and botocore and the payload use one), "
    "in its network stage rather than the local one, with network activation turned off "
    "(the fallback DHCP config has brought the NIC up)",
    "udevadm control/trigger/settle/test-builtin are no-ops (/usr/local/sbin/udevadm): no "
    "udev runs in a container; netplan and cloud-init's hotplug hook call them",
    "netplan's NIC match by PermanentMACAddress is reset to MACAddress in a networkd drop-in "
    "(a veth has no permanent address)",
    "the test CA (of the service stand-in and of the AWS endpoints) is installed in the twin's "
    "trust store (/usr/local/share/ca-certificates)",
    "Debian's archive is a mirror with Debian's signed indexes and only the .debs the payload "
    "needs; the VPC resolver answers deb.debian.org with it",
    "AWS's endpoints (Secrets Manager, S3) are moto; the SSM Agent and the CloudWatch agent in "
    "S3 are stand-in packages signed by a test key, served with that key where AWS serves the "
    "CloudWatch agent's; the payload (its bundle in moto's S3) is rendered with that key and "
    "its fingerprint instead of AWS's",
    "the CloudWatch agent stand-in ships no log: its ctl validates and keeps the config as "
    "fetch-config does and (re)starts a unit that stays up",
    "IMDS, DHCP and the VPC resolver are stand-ins; the instance id and AMI id are made up; "
    "with a rebootWindow the instance's only tag in its metadata is cmc-relay-host-index",
    "a reboot ends systemd-nspawn (exit 133) and the harness starts it again on the same root "
    "(Machine.rebooted), where EC2 restarts the instance itself: a reboot the host asks for "
    "(the maintenance window's) waits for the test to expect it",
    "CloudWatch is moto's, which stores the metrics but evaluates no alarm: the component's "
    "alarm definitions are judged on moto's datapoints by simworld.alarm_check",
    "the queue volume is a loop device whose node the test makes in the twin's /dev once the "
    "setup waits for it (no udev, so no NVMe or by-label links); systemd ignores fstab's "
    "device entries in a container, so at a reboot two units of the twin's make the node and "
    "mount it (/etc/systemd/system/var-spool-postfix.mount), as fstab's entry does on EC2",
)


@dataclass(frozen=True)
class Submission:
    accepted: bool
    code: int | None
    reply: str


SENDER_DOMAIN: Final = "example.com"
OPERATOR_EMAIL: Final = "relay-ops@example.com"
CLIENT_SENDER: Final = "app@example.test"


class TwinBoot:
    """The twin of ``os_name`` in its world, booted from the payload ``settings`` render."""

    def __init__(
        self,
        os_name: str,
        password: str,
        refresh_minutes: int = 1,
        queue_device: str | None = None,
        reboot_window: str | None = None,
    ) -> None:
        """``queue_device``: the bundle's queue volume device (``QUEUE_DEVICE``, as the
        component renders it), which the test then attaches (``attach_volume``); None keeps
        the queue on the root disk. ``reboot_window``: rebootWindow (the instance then has
        its index tag in its metadata, ``host_index``)."""
        self.image = TWINS[os_name]
        self.queue_device = queue_device
        self.password = password
        self.settings = RelaySettings(
            allowed_cidrs=(net.SUBNET_CIDR,),
            os=self.image.os,
            secret_refresh_minutes=refresh_minutes,
            # The mail policy a real team sets: its own senders, the relay's mail to a person.
            sender_domain=SENDER_DOMAIN,
            allowed_sender_domains=(SENDER_DOMAIN, CLIENT_SENDER.partition("@")[2]),
            operator_email=OPERATOR_EMAIL,
            reboot_window=reboot_window,
        )
        self.work = Path(tempfile.mkdtemp(prefix=f"cmc-twin-{os_name}-", dir="/var/tmp"))
        self.tag = f"cmctwin{secrets.token_hex(3)}"  # names the namespaces and the machine
        self.twin: Twin | None = None
        self.world: net.World | None = None
        self.machine: Machine | None = None
        self.instance = 0  # which of the stack's instances (net.INSTANCE_IPS) runs now
        self.host_index = 0  # its place among the relay's hosts (its index tag)
        self.retired: list[Machine] = []  # the instances before it, stopped
        self.aws: subprocess.Popen[str] | None = None
        self.agent: AgentPackages | None = None
        self.secret_arn = ""
        self.bundle: Bundle | None = None
        self.user_data = b""

    # --- stages ---------------------------------------------------------------------------

    def build(self) -> Twin:
        self.twin = build(self.image)
        self.agent = agent_packages(cache_dir())
        return self.twin

    def start_world(self) -> None:
        assert self.twin is not None and self.agent is not None
        self.world = world = net.World(self.tag, self.work, self.settings.relay_host, API_USER)
        world.start_dhcp()
        world.start_resolver()
        world.start_standin(self.password)
        world.start_mirror(self.twin.mirror)
        self.secret_arn = self.start_aws(self.agent)

    def start_aws(self, agent: AgentPackages) -> str:
        """moto over HTTPS as AWS's regional endpoints, with the agents where AWS keeps them
        and the relay's bundle and its pointer in PAYLOAD_STORE; returns the secret's ARN."""
        assert self.world is not None
        aws = [sys.executable, "-m", "simworld.agents", "aws", "--host", net.AWS_IP]
        aws += ["--port", "443", "--region", net.REGION, "--name", SECRET_NAME]
        aws += ["--tls-dir", str(self.work / "tls")]
        aws += [f"--cert-name={name}" for name in net.AWS_NAMES]
        distro = self.image.os.partition("-")[0]  # os-release's ID
        for name, prefix in (
            # Where AWS keeps the pinned version (the payload pins the stand-ins'; see pins).
            ("ssm", f"{SSM_BUCKET}/{VERSION}/debian_{ARCH}"),
            ("cloudwatch", f"{CLOUDWATCH_BUCKET}/{distro}/{ARCH}/{VERSION}"),
        ):
            deb = agent.debs[name]
            aws += [f"--s3-object={prefix}/{deb.name}={deb}"]
            aws += [f"--s3-object={prefix}/{deb.name}.sig={agent.signature(name)}"]
        aws += [f"--s3-object={CLOUDWATCH_KEY}={agent.public_key}"]
        log = (self.work / "aws.log").open("w")
        self.aws = subprocess.Popen(
            self.world.exec(*aws), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, text=True, cwd=REPO, env=net.WORLD_ENV,
        )  # fmt: skip
        self.world.processes.append(self.aws)
        self.rotate_to(self.password)
        self.secret_arn = self._aws_line("ARN ").split()[1]
        self.publish(self.settings)
        return self.secret_arn

    def publish(self, settings: RelaySettings) -> Bundle:
        """Store the bundle ``settings`` render and move the pointer to it, as ``pulumi up``
        does (the bundle object first, then the pointer): a new host boots with it, a running
        one applies it with ``cmc-relay-apply <sha256>``."""
        assert self.agent is not None and self.aws is not None and self.aws.stdin is not None
        self.bundle = bundle = render_bundle(
            settings, self.secret_arn, ssm_agent_key=self.agent.public_key.read_text(),
            cloudwatch_agent_fingerprint=self.agent.fingerprint, pins=pins(self.agent, ARCH),
            queue_device=self.queue_device,
        )  # fmt: skip
        for key, content in ((bundle.key, bundle.data), (POINTER_KEY, bundle.pointer.encode())):
            path = self.work / key.replace("/", "-")
            path.write_bytes(content)
            put = {"s3_object": f"{PAYLOAD_STORE.bucket}/{key}={path}"}
            self.aws.stdin.write(json.dumps(put) + "\n")
            self.aws.stdin.flush()
            self._aws_line("PUT ")
        return bundle

    def rotate_to(self, password: str) -> None:
        """A new value of the secret (the first call creates it); on moto's stdin, not argv."""
        assert self.aws is not None and self.aws.stdin is not None
        self.aws.stdin.write(json.dumps({"username": API_USER, "password": password}) + "\n")
        self.aws.stdin.flush()

    def rotate(self, password: str) -> None:
        self.rotate_to(password)
        self._aws_line("ROTATED ")
        assert self.world is not None and self.world.standin is not None
        self.world.standin.reconfigure(users={API_USER: password})

    def _aws_line(self, prefix: str) -> str:
        assert self.aws is not None and self.aws.stdout is not None
        for line in self.aws.stdout:
            if line.startswith(prefix):
                return line.strip()
        raise BootError(f"moto exited; see {self.work / 'aws.log'}")

    def render(self) -> bytes:
        """The gzipped user data EC2 would hand over, rendered by the component's functions."""
        document = render_user_data(self.settings, store=PAYLOAD_STORE)
        self.user_data = base64.b64decode(pack_user_data(document))
        return self.user_data

    @property
    def instance_id(self) -> str:
        return f"i-0{self.tag[-6:]}{self.instance:010d}"  # made up, in EC2's format

    @property
    def address(self) -> str:
        """The running instance's private address (its ENI's, from DHCP)."""
        return net.INSTANCE_IPS[self.instance]

    @property
    def mac(self) -> str:
        return net.INSTANCE_MACS[self.instance]

    def imds_facts(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "region": net.REGION,
            "role": ROLE,
            "account_id": ACCOUNT_ID,
            "ami_id": "ami-0c2e7e10000000001",  # made up, in EC2's format
            "instance_id": self.instance_id,
            "instance_type": "t3.small",
            "local_ipv4": self.address,
            "local_hostname": f"ip-{self.address.replace('.', '-')}.{net.DOMAIN}",
            "subnet_cidr": net.SUBNET_CIDR,
            "vpc_cidr": net.VPC_CIDR,
            "user_data_base64": base64.b64encode(self.user_data).decode(),
            # With a maintenance window the component tags the instance with its index and
            # enables instance tags in its metadata.
            **(
                {"tags": {HOST_INDEX_TAG: str(self.host_index)}}
                if self.settings.reboot_window is not None
                else {}
            ),
        }

    def prepare(self) -> None:
        """The overlay and the changes DEVIATIONS lists; the metadata service with the payload."""
        assert self.twin is not None and self.world is not None
        self.world.start_imds(self.imds_facts())
        work = self.work / ("twin" if self.instance == 0 else f"twin-{self.instance}")
        self.machine = machine = Machine(self.tag, self.twin.root, work, self.world.network.relay)
        machine.write("/etc/cloud/cloud.cfg.d/90-cmc-twin.cfg", CLOUD_CFG)
        machine.write(
            f"/etc/systemd/network/10-netplan-{net.NIC}.network.d/90-cmc-twin-veth.conf",
            NIC_MATCH.format(mac=self.mac),
        )
        machine.write("/usr/local/sbin/udevadm", UDEVADM, mode=0o755)
        machine.write(f"/usr/local/share/ca-certificates/{CA_NAME}", self.world.ca_path.read_text())
        machine.offline(["update-ca-certificates"])

    def start(self) -> None:
        """Power the instance on; returns once its systemd runs (``boot`` waits for the rest)."""
        assert self.machine is not None
        self.machine.boot()

    def boot(self, timeout: float = 600) -> str:
        """Boot (or, after ``reboot``, boot again) and wait for start-up to end: systemd's state."""
        assert self.machine is not None
        if self.machine.process is None:
            self.machine.boot()
        return self.machine.wait_booted(timeout)

    def attach_volume(self, device: Path) -> None:
        """The queue volume (a loop device of this machine) attached to the running instance
        as ``queue_device``, as EC2 attaches it once the instance runs; mounted again at a
        reboot by QUEUE_MOUNT's units (DEVIATIONS), as fstab's entry does on EC2."""
        assert self.machine is not None and self.queue_device is not None
        self.machine.attach_device(device, self.queue_device)
        rdev = device.stat().st_rdev
        node = {"device": self.queue_device, "major": os.major(rdev), "minor": os.minor(rdev)}
        for name, text in QUEUE_MOUNT.items():
            self.machine.write(f"/etc/systemd/system/{name}", text.format(**node))
        wants = self.machine.root / "etc/systemd/system/local-fs.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / QUEUE_MOUNT_UNIT).unlink(missing_ok=True)
        (wants / QUEUE_MOUNT_UNIT).symlink_to(f"../{QUEUE_MOUNT_UNIT}")

    def stop(self, timeout: float = 120) -> bool:
        """EC2's stop: a clean power-off (systemd stops Postfix, unmounts the file systems);
        True if it powered off by itself within ``timeout``."""
        assert self.machine is not None
        return self.machine.stop(timeout)

    def next_instance(self) -> None:
        """The stopped instance retired, and its replacement's identity: the next instance id,
        MAC and address (the NIC becomes its ENI). ``prepare`` and ``start`` or ``boot`` then
        bring it up from the same user data, which names the same pointer."""
        assert self.machine is not None and self.machine.process is None, "stop it first"
        assert self.world is not None
        self.retired.append(self.machine)
        self.machine = None
        self.instance += 1
        self.world.network.new_interface(self.mac)

    def reboot(self, timeout: float = 600) -> str:
        assert self.machine is not None
        self.machine.reboot()
        return self.machine.wait_booted(timeout)

    def rebooted(self, within: float, timeout: float = 600) -> str:
        """Once the instance reboots by itself (within ``within`` seconds), its next boot:
        systemd's state once start-up is over."""
        assert self.machine is not None
        self.machine.rebooted(within)
        return self.machine.wait_booted(timeout)

    # --- what the booted host shows -------------------------------------------------------

    def run(
        self, *argv: str, check: bool = False, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self.machine is not None
        return self.machine.run(argv, check=check, timeout=timeout, input=input)

    def cloud_init_status(self) -> dict[str, Any]:
        out = self.run("cloud-init", "status", "--wait", "--format=json", timeout=600).stdout
        status: dict[str, Any] = json.loads(out)
        return status

    def failed_units(self) -> list[str]:
        out = self.run("systemctl", "--failed", "--plain", "--no-legend").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def submit(self, source: str, message_id: str, body: str | None = None) -> Submission:
        """One message to the running instance's address (``body``: the agent's default)."""
        assert self.world is not None
        client = [sys.executable, "-m", "simworld.agents", "submit", "--source", source]
        client += ["--server", self.address, "--mail-from", CLIENT_SENDER]
        client += ["--rcpt", "someone@example.com", "--message-id", message_id]
        client += [] if body is None else ["--body", body]
        out = subprocess.run(
            self.world.exec(*client), capture_output=True, text=True, check=True,
            cwd=REPO, env=net.WORLD_ENV, timeout=60,
        ).stdout  # fmt: skip
        return Submission(**json.loads(out))

    def queued_message_ids(self) -> set[str]:
        """The Message-IDs of the mail in Postfix's queue (postcat reads each queue file's
        headers)."""
        found = set()
        for line in self.run("postqueue", "-j", check=True).stdout.splitlines():
            if line.strip():
                queue_id = json.loads(line)["queue_id"]
                text = self.run("postcat", "-hq", queue_id).stdout
                found |= {header.split(":", 1)[1].strip() for header in text.splitlines()
                          if header.lower().startswith("message-id:")}  # fmt: skip
        return found

    def messages(self, message_id: str) -> list[MessageRecord]:
        assert self.world is not None and self.world.standin is not None
        return [m for m in self.world.standin.messages() if m.message_id == message_id]

    def wait_for_message(self, message_id: str, timeout: float = 60) -> MessageRecord:
        return wait_until(
            lambda: next(iter(self.messages(message_id)), None), timeout,
            f"{message_id} at the stand-in", interval=0.5,
        )  # fmt: skip

    def metric_samples(self, since: float) -> list[Series]:
        """What the relay's hosts published to moto's CloudWatch from ``since`` (epoch seconds)
        on, read as an operator's console would: through CloudWatch's API."""
        assert self.world is not None
        reader = [sys.executable, "-m", "simworld.agents", "metrics"]
        reader += ["--endpoint", f"https://{net.AWS_IP}", "--ca", str(self.world.ca_path)]
        reader += ["--region", net.REGION, "--namespace", DEFAULT_MONITORING.namespace]
        reader += ["--since", str(since)]
        out = subprocess.run(
            self.world.exec(*reader), capture_output=True, text=True, check=True,
            cwd=REPO, env=net.WORLD_ENV, timeout=60,
        ).stdout  # fmt: skip
        return [Series.from_json(item) for item in json.loads(out)]

    def verify(self, *skip: str) -> tuple[int, dict[str, Any]]:
        result = self.run("cmc-relay-verify", *(f"--skip={name}" for name in skip))
        # A setup that failed before installing the verifier leaves none: its exit status tells.
        report: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
        return result.returncode, report

    def resolv_conf(self) -> list[str]:
        text = self.run("cat", "/etc/resolv.conf").stdout
        return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")]

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "short-monotonic", *args).stdout

    def secret_places(self) -> list[str]:
        """Where the password is: only Postfix's table should hold it. Searched: the twin's
        files and journal, the world's logs, and the arguments and environment of every
        process of the twin and the world."""
        dirs = ["/etc", "/var/log", "/var/lib/cloud", "/run/cloud-init", "/var/tmp", "/tmp"]
        assert self.machine is not None  # the pattern goes on stdin, never into grep's argv
        grep = ["grep", "-rlF", "-f", "-", *dirs]
        found = self.machine.run(grep, check=False, input=self.password + "\n").stdout.split()
        secret = self.password.encode()
        if secret in self.journal().encode():
            found.append("journal")
        # (The stand-in's user table, standin.json, is the service's side: not searched.)
        logs = self.work.glob("*.log")
        found += [f"world {log.name}" for log in logs if secret in log.read_bytes()]
        pids = [p.pid for p in self.world.processes] if self.world else []
        if self.machine.process is not None:
            pids += [self.machine.process.pid, *descendants(self.machine.process.pid)]
        for pid in pids:
            for part in ("cmdline", "environ"):
                with contextlib.suppress(OSError):
                    if secret in Path(f"/proc/{pid}/{part}").read_bytes():
                        found.append(f"pid {pid} {part}")
        return found

    def close(self, keep: Path | None = None) -> None:
        """Stop everything, each part even if another fails; ``keep`` first receives the
        world's logs, the twin's console, cloud-init's logs and (if it runs) its journal."""
        with contextlib.ExitStack() as teardown:
            teardown.callback(shutil.rmtree, self.work, ignore_errors=True)
            if self.world is not None:
                teardown.callback(self.world.close)
            for machine in [*self.retired, *([self.machine] if self.machine else [])]:
                teardown.callback(machine.close)
            if keep is not None:
                self.keep_logs(keep)

    def keep_logs(self, keep: Path) -> None:
        keep.mkdir(parents=True, exist_ok=True)
        logs = [*self.work.glob("*.log"), *self.work.glob("*.jsonl")]
        if self.machine is not None:
            logs += self.machine.work.glob("console-*.log")
            logs += (self.machine.upper / "var/log").glob("cloud-init*.log")
        for log in logs:
            shutil.copy(log, keep / log.name)
        for number, machine in enumerate(self.retired):  # the instances replaced, by number
            for log in [*machine.work.glob("console-*.log"),
                        *(machine.upper / "var/log").glob("cloud-init*.log")]:  # fmt: skip
                shutil.copy(log, keep / f"instance-{number}-{log.name}")
        with contextlib.suppress(BootError):  # a twin that is not running has no journal
            (keep / "journal.log").write_text(self.journal())


class Prober:
    """``simworld.agents probe`` from the application network while something happens: a client
    that connects to ``server`` (the running instance's address by default) again and again;
    ``stop`` returns its sessions, refusals and each session's start and outcome."""

    def __init__(
        self,
        boot: TwinBoot,
        work: Path,
        server: str | None = None,
        interval: float = 0.1,
        max_seconds: float = 300,  # bounded even if the test never stops it
    ) -> None:
        assert boot.world is not None
        self.server = server = server or boot.address
        self.stop_file = work / f"probe-{server}.stop"
        self.stop_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "simworld.agents", "probe", "--source", net.CLIENT_IP]
        command += ["--server", server, "--stop-file", str(self.stop_file)]
        command += ["--interval", str(interval), "--max-seconds", str(max_seconds)]
        self.process = subprocess.Popen(
            boot.world.exec(*command), stdout=subprocess.PIPE, text=True, cwd=REPO,
            env=net.WORLD_ENV,
        )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        self.stop_file.touch()
        out, _ = self.process.communicate(timeout=60)
        result: dict[str, Any] = json.loads(out)
        return result

    def kill(self) -> None:
        """For a teardown after a failure: this probe's process, by its PID."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def clean_log_problems(log: str) -> list[str]:
    """Lines of cloud-init's log that are warnings, errors or tracebacks."""
    pattern = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
    return [line for line in log.splitlines() if pattern.search(line)]
