"""The network a twin boots into, playing the VPC, AWS, Debian's archive and the service.

Two network namespaces per boot: the twin's own (its NIC ``ens5``, as EC2 names a Nitro NIC)
and the "VPC" at the other end of the veth, which holds everything the instance talks to::

    10.0.1.1         the subnet's router; DHCP (dnsmasq) hands the twin 10.0.1.10 (a
                     replacement instance, with the next MAC, 10.0.1.11)
    10.0.0.2         the VPC resolver (VPC base + 2): the service's name, AWS's and Debian's,
                     and the records the stack keeps there (its hostName, as Route 53 would)
    169.254.169.254  the instance metadata service (``simworld.twin.imds``)
    203.0.113.10     AWS's regional endpoints over HTTPS (moto: Secrets Manager, S3, CloudWatch)
    203.0.113.20     deb.debian.org: the twin's mirror (Debian's signed indexes, real .debs)
    198.51.100.25/26 the CMC stand-in, both A records of the service's host name
    10.0.1.50        an application server in allowedCidrs
    192.0.2.50       a host outside allowedCidrs

Nothing has a route out of these namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from simworld.rig.dns import Dnsmasq
from simworld.rig.network import Network
from simworld.rig.process import REPO, run, stop_process
from simworld.rig.service import StandInProcess
from simworld.standin.config import StandInConfig

SUBNET_CIDR: Final = "10.0.1.0/24"
VPC_CIDR: Final = "10.0.0.0/16"
ROUTER_IP: Final = "10.0.1.1"
# The instances of the stack, one after the other (a replacement is the next): each has its
# own ENI, that is its MAC and private address. The first is the twin of every test.
INSTANCE_IPS: Final = ("10.0.1.10", "10.0.1.11")
INSTANCE_MACS: Final = ("0e:c2:7e:00:00:0a", "0e:c2:7e:00:00:0b")
TWIN_IP: Final = INSTANCE_IPS[0]
RESOLVER_IP: Final = "10.0.0.2"
IMDS_IP: Final = "169.254.169.254"
AWS_IP: Final = "203.0.113.10"
MIRROR_IP: Final = "203.0.113.20"
CMC_IPS: Final = ("198.51.100.25", "198.51.100.26")
CLIENT_IP: Final = "10.0.1.50"
OUTSIDER_IP: Final = "192.0.2.50"
REGION: Final = "ap-northeast-1"
NIC: Final = "ens5"
MAC: Final = INSTANCE_MACS[0]
DOMAIN: Final = f"{REGION}.compute.internal"
# The bucket the twin's payload names for its bundle of on-host scripts.
PAYLOAD_BUCKET: Final = "cmc-relay-twin-payload"
AWS_NAMES: Final = (
    *(
        f"{service}.{REGION}.amazonaws.com"
        for service in ("secretsmanager", "s3", "ssm", "ssmmessages", "ec2messages", "sts")
    ),
    f"monitoring.{REGION}.amazonaws.com",  # CloudWatch's API, where the publisher sends
    # boto3 reaches a bucket by its virtual-hosted name, as on EC2.
    f"{PAYLOAD_BUCKET}.s3.{REGION}.amazonaws.com",
    # The CloudWatch agent's downloads: the Region's package, the key from the global bucket.
    f"amazoncloudwatch-agent-{REGION}.s3.{REGION}.amazonaws.com",
    "amazoncloudwatch-agent.s3.amazonaws.com",
)
DEBIAN_NAMES: Final = ("deb.debian.org", "security.debian.org")
WORLD_ENV: Final = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}


class VpcNetwork(Network):
    """``relay`` is the twin's namespace (NIC ``ens5``), ``service`` the VPC's."""

    def _create(self, host_name: str) -> None:
        for name in (self.relay, self.service):
            run("ip", "netns", "add", name)
            self.created.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run(
            "ip", "link", "add", NIC, "address", MAC, "netns", self.relay,
            "type", "veth", "peer", "name", "vpc0", "netns", self.service,
        )  # fmt: skip
        addresses = (
            f"{ROUTER_IP}/24",
            *(f"{ip}/32" for ip in (RESOLVER_IP, IMDS_IP, AWS_IP, MIRROR_IP, *CMC_IPS)),
            *(f"{ip}/32" for ip in (CLIENT_IP, OUTSIDER_IP)),
        )
        for cidr in addresses:
            run("ip", "-n", self.service, "addr", "add", cidr, "dev", "vpc0")
        run("ip", "-n", self.service, "link", "set", "vpc0", "up")
        # The NIC stays down and unaddressed: the twin's own networkd brings it up with DHCP.

    def new_interface(self, mac: str) -> None:
        """The NIC as a new instance's ENI: what the stopped one configured on it gone, the
        new MAC (DHCP then hands out that instance's address), down until its networkd."""
        run("ip", "-n", self.relay, "addr", "flush", "dev", NIC)
        run("ip", "-n", self.relay, "link", "set", NIC, "down")
        run("ip", "-n", self.relay, "link", "set", NIC, "address", mac)


class World:
    """Every service of the VPC, started in order; ``close`` stops them (by PID) and the
    namespaces. The password reaches the stand-in and moto by file and pipe, never argv."""

    def __init__(self, tag: str, work: Path, smtp_host: str, api_user: str) -> None:
        self.work = work
        self.smtp_host = smtp_host
        self.api_user = api_user
        self.network = VpcNetwork(tag, smtp_host)
        self.processes: list[subprocess.Popen[Any]] = []
        self.dns: list[Dnsmasq] = []
        self.resolver: Dnsmasq | None = None
        self.imds: subprocess.Popen[Any] | None = None
        self.standin: StandInProcess | None = None
        self.secret_arn = ""

    @property
    def ca_path(self) -> Path:
        return self.work / "tls" / "ca.pem"

    def exec(self, *command: str | Path) -> list[str]:
        return self.network.exec(self.network.service, *command)

    def start(self, name: str, command: Sequence[str | Path], ready: str) -> subprocess.Popen[Any]:
        """A long-running process in the VPC, returned once it printed a line starting with
        ``ready``. Its log is appended to (a process started again keeps the earlier lines)."""
        log = (self.work / f"{name}.log").open("a")
        process = subprocess.Popen(
            self.exec(*command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
            env=WORLD_ENV,
        )
        self.processes.append(process)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if line.startswith(ready):
                return process
        raise RuntimeError(f"{name} exited before it was ready; see {log.name}")

    def start_dhcp(self) -> None:
        self.dns.append(
            Dnsmasq(
                self.network,
                self.network.service,
                self.work / "dhcp.log",
                [
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--port=0",
                    "--interface=vpc0",
                    "--bind-interfaces",
                    f"--dhcp-range={INSTANCE_IPS[0]},{INSTANCE_IPS[-1]},255.255.255.0,2m",
                    *(
                        f"--dhcp-host={m},{ip}"
                        for m, ip in zip(INSTANCE_MACS, INSTANCE_IPS, strict=True)
                    ),
                    f"--dhcp-option=option:router,{ROUTER_IP}",
                    f"--dhcp-option=option:dns-server,{RESOLVER_IP}",
                    f"--dhcp-option=option:domain-name,{DOMAIN}",
                    "--dhcp-option=option:mtu,9001",
                    f"--dhcp-leasefile={self.work}/dhcp.leases",
                    "--log-dhcp",
                ],
            )
        )

    @property
    def stack_records(self) -> Path:
        """The stack's own records in the resolver (a hosts file), as ``point`` sets them."""
        return self.work / "stack-records.hosts"

    def start_resolver(self) -> None:
        """The VPC resolver: the service's host name round robin, AWS's endpoints, Debian's
        archive, the instances' own names and the stack's records (none until ``point``);
        anything else NXDOMAIN."""
        records = [f"--host-record={self.smtp_host},{ip}" for ip in CMC_IPS]
        records += [f"--host-record={name},{AWS_IP}" for name in AWS_NAMES]
        records += [f"--host-record={name},{MIRROR_IP}" for name in DEBIAN_NAMES]
        for ip in INSTANCE_IPS:
            records.append(f"--host-record=ip-{ip.replace('.', '-')}.{DOMAIN},{ip}")
        self.stack_records.write_text("")
        # dnsmasq reads the file again on SIGHUP, after it dropped to nobody, who cannot enter
        # the world's private work directory: it stays root (in the world's namespace).
        records += [f"--addn-hosts={self.stack_records}", "--user=root"]
        self.resolver = resolver = Dnsmasq(
            self.network,
            self.network.service,
            self.work / "resolver.log",
            [
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                f"--listen-address={RESOLVER_IP}",
                *records,
            ],
        )
        self.dns.append(resolver)

    def point(self, name: str, address: str) -> None:
        """The stack's record: ``name`` resolves to ``address`` from now on (Route 53's A
        record, as the component moves it to a replacement host). dnsmasq reads its hosts
        files again on SIGHUP, and empties its cache."""
        assert self.resolver is not None
        self.stack_records.write_text(f"{address} {name}\n")
        self.resolver.process.send_signal(signal.SIGHUP)

    def resolve(self, name: str) -> list[str]:
        """What the VPC resolver answers an application for ``name`` (A records)."""
        dig = ["dig", "+short", "+time=2", "+tries=2", f"@{RESOLVER_IP}", name, "A"]
        out = subprocess.run(self.exec(*dig), capture_output=True, text=True, timeout=30).stdout
        return out.split()

    def start_standin(self, password: str) -> None:
        config = StandInConfig(
            hosts=CMC_IPS,
            port=10025,
            hostname=self.smtp_host,
            tls_dir=str(self.work / "tls"),
            users={self.api_user: password},
        )
        self.standin = StandInProcess(self.network, self.work, config)

    def start_mirror(self, mirror: Path) -> None:
        command = [sys.executable, "-u", "-m", "http.server", "--bind", MIRROR_IP, "80"]
        command += ["--directory", str(mirror)]
        self.start("mirror", command, "Serving HTTP")

    def start_imds(self, facts: dict[str, Any]) -> None:
        """The metadata service of one instance; the one it replaces (the instance before, now
        stopped) is stopped first. The events file keeps every instance's requests."""
        if self.imds is not None:
            stop_process(self.imds)
            self.processes.remove(self.imds)
        config = self.work / "imds.json"
        config.write_text(json.dumps(facts))
        imds = [sys.executable, "-m", "simworld.twin.imds", "--config", str(config)]
        imds += ["--events", str(self.work / "imds-events.jsonl")]
        self.imds = self.start("imds", imds, "READY")

    def imds_events(self) -> list[dict[str, Any]]:
        path = self.work / "imds-events.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def close(self) -> None:
        if self.standin is not None:
            self.standin.stop()
        for dnsmasq in self.dns:
            dnsmasq.stop()
        for process in self.processes:
            stop_process(process)
        self.network.destroy()
