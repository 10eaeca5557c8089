"""userdata/scripts/cmc-relay-verify against a relay on the rig (real Postfix and dnsmasq).

One rig serves the module: each test breaks one thing on the relay, runs the verifier in the
relay's namespace, checks that exactly the right check fails, and restores what it broke. The
staged configuration (what cloud-init leaves in /etc/cmc-relay) is the one the rig's
``configure_postfix`` staged and applied with the shipped cmc-relay-setup; the host's other
files the verifier reads (/etc/hosts, networkd's files, dnsmasq's pid file) are under a
temporary root (``--root``). Nothing runs cloud-init, SSM Agent or the CloudWatch agent
here: those checks are skipped (the twins run them, tests/twin/test_twin_boot.py). The SMTP
password carries a marker that must never show up in the verifier's output. Layout:
``simworld/rig/``.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmc_relay.userdata.render import (
    postfix_parameters,
    postfix_services,
    render_template,
)
from simworld.netns_rig import (
    API_USER,
    CLIENT_INSIDE,
    REPO,
    SERVICE_IPS,
    UPSTREAM_DNS,
    Dnsmasq,
    Rig,
    RigOptions,
    Secrets,
    build_rig,
    new_mail,
    relay_settings,
    rig_directory,
    run,
)

pytestmark = pytest.mark.integration

VERIFY = REPO / "userdata" / "scripts" / "cmc-relay-verify"
MARK = "Zq9-SECRET-MARKER-7xW"
PASSWORD = f"{MARK}-{secrets.token_urlsafe(12)}"
# The policy tables in use: a sender domain, the senders allowed, the operator's address.
SETTINGS = relay_settings(
    sender_domain="example.com",
    allowed_sender_domains=("example.com", "example.test"),
    operator_email="relay-ops@example.com",
)
# What nothing on the rig runs (see the module's docstring).
NOT_ON_THE_RIG = ("cloud-init", "ssm-agent", "cloudwatch-agent")
NETWORK_FILE = "run/systemd/network/10-cmc0.network"  # as netplan or networkd leaves one


@dataclass
class Host:
    """The rig's relay, its staged configuration and its temporary root."""

    rig: Rig
    root: Path
    """The rig's directory (Postfix's, the logs)."""
    stage: Path
    """What /etc/cmc-relay is on a host: relay.env, main.cf, master.cf, postfix/."""
    host_root: Path
    """The verifier's --root."""
    transcript: list[str]
    """Everything the verifier printed."""

    @property
    def conf(self) -> Path:
        return self.rig.postfix.config_dir

    @property
    def env_file(self) -> Path:
        return self.stage / "relay.env"

    def run(self, *command: str | Path) -> subprocess.CompletedProcess[str]:
        """In the relay's namespace."""
        return run(*self.rig.network.exec(self.rig.network.relay, *command))

    def postconf(self, *args: str) -> None:
        run("postconf", "-c", self.conf, *args)

    def staged(self, name: str) -> str:
        return parameters(self.stage)[name]

    def dnsmasq_started(self, cache: Dnsmasq) -> None:
        (self.host_root / "run/dnsmasq/dnsmasq.pid").write_text(f"{cache.process.pid}\n")
        self.rig.cache = cache

    def secret_leaks(self) -> tuple[list[str], int]:
        """Where the password shows up: the verifier's outputs and every file of the rig
        (logs, the staged files), the password table and the stand-in's user table aside.
        Returns the places it was found and how many places were searched."""
        places = {f"output #{n}": text for n, text in enumerate(self.transcript)}
        allowed = {self.conf / "relay_password", self.conf / "relay_password.db"}
        allowed.add(self.root / "standin.json")
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and path not in allowed:
                places[f"relay {path.relative_to(self.root)}"] = path.read_text(errors="replace")
        return [place for place, text in places.items() if PASSWORD in text], len(places)


def parameters(stage: Path) -> dict[str, str]:
    lines = (stage / "main.cf").read_text().splitlines()
    return dict(line.split(" = ", 1) for line in lines)


def staged_parameters(host: Host) -> list[str]:
    """The parameters the verifier checks: the rendered ones, then the rig's own paths."""
    staged = list(parameters(host.stage))
    assert set(postfix_parameters(SETTINGS)) <= set(staged)
    return staged


def host_files(rig: Rig, host_root: Path) -> None:
    """The host's files under --root: /etc/hosts as the relay's namespace has it, a network
    networkd configures with cmc-relay-setup's drop-in, dnsmasq's pid file."""
    (host_root / "etc").mkdir(parents=True)
    shutil.copyfile(rig.network.etc / "hosts", host_root / "etc/hosts")
    network = host_root / NETWORK_FILE
    network.parent.mkdir(parents=True)
    network.write_text("[Match]\nName=cmc0\n\n[Network]\nDHCP=yes\n")
    drop_in = host_root / f"etc/systemd/network/{network.name}.d/cmc-relay-dns.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(render_template("/etc/cmc-relay/networkd-no-dns.conf", rig.settings))
    (host_root / "run/dnsmasq").mkdir(parents=True)


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, secrets: Secrets, netns_etc_dir: None
) -> Iterator[Host]:
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(rig_directory(tmp_path_factory.mktemp("verify")))
        options = RigOptions(api_key=PASSWORD, standin={"users": {API_USER: PASSWORD}})
        rig = build_rig(stack, root, SETTINGS, options, secrets)
        found = Host(rig, root, rig.postfix.stage_dir, root / "host", [])
        host_files(rig, found.host_root)
        found.dnsmasq_started(rig.cache)
        yield found
        leaks, _ = found.secret_leaks()
        assert leaks == [], f"the password leaked into {leaks}"


def run_verifier(host: Host, *options: str) -> subprocess.CompletedProcess[str]:
    """The verifier in the relay's namespace, with the rig's paths."""
    paths: tuple[str | Path, ...] = (
        "--root", host.host_root, "--env-file", host.env_file,
        "--postfix-config-dir", host.conf, "--resolv-conf", host.rig.network.etc / "resolv.conf",
    )  # fmt: skip
    skips = [f"--skip={name}" for name in NOT_ON_THE_RIG]
    command = (sys.executable, VERIFY, *paths, *skips, *options)
    result = subprocess.run(
        host.rig.network.exec(host.rig.network.relay, *command),
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    host.transcript.append(result.stdout + result.stderr)
    return result


def verify(host: Host, *options: str) -> tuple[int, dict[str, str], str]:
    """Exit code, {check name: detail} of the failed checks, and everything it printed."""
    result = run_verifier(host, *options)
    printed = result.stdout + result.stderr
    assert MARK not in printed
    report = json.loads(result.stdout)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert report["ok"] is (not failed)
    return result.returncode, failed, printed


def test_a_good_relay_passes_every_check(host: Host) -> None:
    result = run_verifier(host)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [c["name"] for c in report["checks"]]
    assert names == [
        "cloud-init",
        "postfix-running",
        "dnsmasq-running",
        "transport-table",
        "postfix-tables",
        *(f"postconf:{name}" for name in staged_parameters(host)),
        *(f"master.cf:{name}" for name in postfix_services(SETTINGS)),
        "password-table",
        "password-table-mode",
        "resolver",
        "dhcp-dns-override",
        "dns-cache",
        "smtp-service",
        "inbound-tls",
        "ssm-agent",
        "cloudwatch-agent",
    ]
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert [details[name] for name in NOT_ON_THE_RIG] == ["skipped"] * len(NOT_ON_THE_RIG)
    relay_host = SETTINGS.relay_host
    assert details["dns-cache"] == f"{len(SERVICE_IPS)} record(s) for {relay_host}"
    assert details["smtp-service"] == (
        f"{relay_host}:{SETTINGS.smtp_port} STARTTLS verified, AUTH sasl"
    )
    # The certificate cmc-relay-inbound-cert made, as operators pin it.
    chain_file = host.staged("smtpd_tls_chain_files")
    made = run("openssl", "x509", "-in", chain_file, "-noout", "-fingerprint", "-sha256",
               "-enddate").stdout  # fmt: skip
    assert re.fullmatch(r"may: TLSv1\.[23], sha256 Fingerprint=[0-9A-F:]{95}, notAfter=.+ GMT",
                        details["inbound-tls"]), details["inbound-tls"]  # fmt: skip
    assert details["inbound-tls"].endswith(", ".join(made.splitlines()))
    assert details["postconf:transport_maps"] == f"hash:{host.conf}/transport"  # expanded
    assert MARK not in result.stdout + result.stderr


def test_dnsmasq_stopped(host: Host) -> None:
    host.rig.cache.stop()
    try:
        code, failed, printed = verify(host)
    finally:  # started again as cmc-relay-setup would, with the same configuration
        log = host.root / f"dnsmasq-cache-{secrets.token_hex(3)}.log"
        conf = host.root / "dnsmasq.conf"
        host.dnsmasq_started(Dnsmasq(host.rig.network, host.rig.network.relay, log,
                                     [f"--conf-file={conf}"]))  # fmt: skip
    assert code == 1
    assert set(failed) == {"dnsmasq-running", "dns-cache"}
    assert "FAILED: dnsmasq-running, dns-cache" in printed
    assert verify(host)[0] == 0


def test_a_queue_on_the_root_disk_where_a_queue_volume_is_due(host: Host) -> None:
    """On EC2 relay.env names the queue volume's device (the rig's does not): Postfix's queue
    must then be on it, or the next replacement loses it."""
    staged = host.env_file.read_text()
    host.env_file.write_text(staged + "CMC_QUEUE_DEVICE=/dev/sdf\n")
    try:
        code, failed, _ = verify(host)
    finally:
        host.env_file.write_text(staged)
    assert code == 1
    assert list(failed) == ["queue-volume"]
    assert failed["queue-volume"] == (
        f"{host.rig.postfix.queue_dir} is on the root disk, not on the cmc-relay-queue volume "
        "(/dev/sdf): see cmc-relay-queue-volume"
    )


def test_password_table_readable_by_others(host: Host) -> None:
    table = host.conf / "relay_password"
    table.chmod(0o644)
    try:
        code, failed, _ = verify(host)
    finally:
        table.chmod(0o600)
    assert code == 1
    assert list(failed) == ["password-table-mode"]
    assert f"{table} 644/0" in failed["password-table-mode"]


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("default_destination_concurrency_limit", "50"),
        ("smtp_tls_security_level", "none"),
        ("smtpd_sender_restrictions", ""),
        ("sender_canonical_maps", ""),
        ("virtual_alias_maps", ""),
    ],
)
def test_a_wrong_postfix_setting(host: Host, name: str, wrong: str) -> None:
    right = host.staged(name)
    host.postconf("-e", f"{name} = {wrong}")
    try:
        code, failed, _ = verify(host)
    finally:
        host.postconf("-e", f"{name} = {right}")
    assert code == 1
    expected = {f"postconf:{name}": f"is {wrong!r}, staged {right!r}"}
    if name == "smtp_tls_security_level":  # nor does the check itself send the key unverified
        expected["smtp-service"] = f"smtp_tls_security_level {wrong}: authMode sasl needs secure"
    assert failed == expected


def test_a_missing_master_cf_service(host: Host) -> None:
    """Without tlsproxy, TLS connection reuse makes every delivery defer."""
    (name, entry), *_ = postfix_services(SETTINGS).items()
    host.postconf("-MX", name)
    try:
        code, failed, _ = verify(host)
    finally:
        host.postconf("-M", f"{name} = {entry}")
    assert code == 1
    assert list(failed) == [f"master.cf:{name}"]
    assert "no entry" in failed[f"master.cf:{name}"]


def test_inbound_starttls_switched_off_on_the_host(host: Host) -> None:
    """may rendered, none in effect: the applications' mail would go in clear text."""
    host.postconf("-e", "smtpd_tls_security_level = none")
    host.run("postfix", "-c", host.conf, "reload")
    try:
        code, failed, _ = verify(host)
    finally:
        host.postconf("-e", "smtpd_tls_security_level = may")
        host.run("postfix", "-c", host.conf, "reload")
    assert code == 1
    assert failed == {
        "postconf:smtpd_tls_security_level": "is 'none', staged 'may'",
        "inbound-tls": "STARTTLS not offered, inboundTls may",
    }
    assert verify(host)[0] == 0


def test_resolver_not_asking_the_cache(host: Host) -> None:
    resolv_conf = host.rig.network.etc / "resolv.conf"
    original = resolv_conf.read_text()
    resolv_conf.write_text(f"nameserver {UPSTREAM_DNS}\n")  # the VPC resolver alone
    try:
        code, failed, _ = verify(host)
    finally:
        resolv_conf.write_text(original)
    assert code == 1
    assert list(failed) == ["resolver"]
    assert "127.0.0.1 first" in failed["resolver"]


def test_networkd_free_to_rewrite_the_resolver(host: Host) -> None:
    """Debian's images run systemd-networkd (no dhclient): each .network gets a drop-in."""
    [drop_in] = host.host_root.glob("etc/systemd/network/*.network.d/cmc-relay-dns.conf")
    saved = drop_in.read_text()
    drop_in.unlink()
    try:
        code, failed, _ = verify(host)
    finally:
        drop_in.write_text(saved)
    assert code == 1
    assert list(failed) == ["dhcp-dns-override"]
    assert str(drop_in) in failed["dhcp-dns-override"]


@pytest.mark.parametrize(
    "table", ["cmc-relay-sender-access", "cmc-relay-sender-canonical", "cmc-relay-operator"]
)
def test_a_policy_table_changed_on_the_host(host: Host, table: str) -> None:
    path = host.conf / table
    original = path.read_text()
    path.write_text("/./ OK\n" + original)  # e.g. every sender allowed
    try:
        code, failed, _ = verify(host)
    finally:
        path.write_text(original)
    assert code == 1
    assert failed == {"postfix-tables": f"['{table}'] not as staged in {host.stage}/postfix"}


def test_transport_table_not_compiled_after_a_change(host: Host) -> None:
    transport = host.conf / "transport"
    run("touch", "-d", "+1 minute", transport)
    try:
        code, failed, _ = verify(host)
    finally:
        run("touch", transport)
        run("postmap", "-c", host.conf, transport)
    assert code == 1
    assert list(failed) == ["transport-table"]


def test_skip_marks_checks_as_skipped(host: Host) -> None:
    result = run_verifier(host, "--skip", "cloud-init", "--skip", "postconf")
    report = json.loads(result.stdout)
    skipped = [c["name"] for c in report["checks"] if c["detail"] == "skipped"]
    assert skipped == [
        "cloud-init",
        *(f"postconf:{n}" for n in staged_parameters(host)),
        *NOT_ON_THE_RIG[1:],
    ]


def test_the_leak_check_finds_a_planted_password(host: Host) -> None:
    planted = host.root / "planted.log"
    planted.write_text(f"oops {PASSWORD}\n")
    try:
        leaks, searched = host.secret_leaks()
    finally:
        planted.unlink()
    assert leaks == ["relay planted.log"]
    assert searched > 20


def test_postfix_writes_the_mail_log(host: Host) -> None:
    """maillog_file: Postfix's own log, in the file the CloudWatch agent ships (as root)."""
    mail = new_mail(sender="app@example.com")  # an allowed sender domain
    [reply] = host.rig.submit([mail], source=CLIENT_INSIDE)
    assert reply.code == 250
    host.rig.postfix.wait_for_empty_queue()
    log = host.rig.postfix.log()
    message_id = mail.message_id
    queue_ids = re.findall(rf"postfix/cleanup\[\d+\]: (\w+): message-id={message_id}", log)
    assert len(queue_ids) == 1, log[-2000:]
    [queue_id] = queue_ids
    assert re.search(rf"postfix/smtp\[\d+\]: {queue_id}: .* status=sent", log), log[-2000:]
    owner = run("stat", "-c", "%U", host.staged("maillog_file")).stdout.split()
    assert owner == ["root"]
    assert MARK not in log
