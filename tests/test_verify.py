"""userdata/scripts/cmc-relay-verify on a relay host booted by the sandbox (real cloud-init).

One boot serves the module: each test breaks one thing on the booted host, runs the verifier
there, checks that exactly the right check fails, and restores what it broke. The SMTP password
carries a marker that must never show up in the verifier's output.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator

import pytest

from cmc_relay.userdata.render import MAIL_LOG, postfix_parameters, postfix_services
from simworld import chroot_prereq as prereq
from simworld.chroot_host import BOOT_ENV, CLIENT_IP, SETTINGS, Sandbox
from simworld.throwaway import Unsupported

pytestmark = pytest.mark.integration

MARK = "Zq9-SECRET-MARKER-7xW"
PASSWORD = f"{MARK}-{secrets.token_urlsafe(12)}"
# Skipped only where the machine cannot host the sandbox; missing packages fail the tests.
UNSUITABLE = prereq.unsuitable(prereq.gather())


@pytest.fixture(scope="module")
def host() -> Iterator[Sandbox]:
    if UNSUITABLE:
        pytest.skip("the sandbox cannot run here: " + "; ".join(UNSUITABLE))
    assert prereq.problems(prereq.gather()) == []
    sandbox = Sandbox(PASSWORD)
    try:
        try:
            sandbox.open()
            sandbox.wire_network()
        except Unsupported as error:
            pytest.skip(f"the sandbox cannot run here: {error}")
        sandbox.start_syslog()
        sandbox.start_secrets_manager()
        sandbox.start_resolver()
        sandbox.start_standin()
        sandbox.prepare_overlay(sandbox.render()[1])
        for _ in sandbox.boot():
            pass
        yield sandbox
        leaks, _ = sandbox.secret_leaks()
        assert leaks == [], f"the password leaked into {leaks}"
    finally:
        assert sandbox.close() == []


def verify(host: Sandbox, *options: str) -> tuple[int, dict[str, str], str]:
    """Exit code, {check name: detail} of the failed checks, and everything it printed."""
    result = host.machine.run(["cmc-relay-verify", *options], check=False)
    printed = result.stdout + result.stderr
    assert MARK not in printed
    report = json.loads(result.stdout)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert report["ok"] is (not failed)
    return result.returncode, failed, printed


def sh(host: Sandbox, script: str) -> str:
    return host.machine.run(["sh", "-c", script]).stdout


def test_a_good_boot_passes_every_check(host: Sandbox) -> None:
    result = host.machine.run(["cmc-relay-verify"], check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    names = [c["name"] for c in report["checks"]]
    assert names == [
        "cloud-init",
        "postfix-running",
        "dnsmasq-running",
        "transport-table",
        "postfix-tables",
        *(f"postconf:{name}" for name in postfix_parameters(SETTINGS)),
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
    # The sandbox runs no systemd, so nothing runs the agent: said, not failed (on EC2 it is).
    assert details["ssm-agent"] == (
        "not checked: systemd is not PID 1, nothing here runs amazon-ssm-agent"
    )
    assert details["cloudwatch-agent"] == (
        "not checked: systemd is not PID 1, nothing here runs amazon-cloudwatch-agent"
    )
    assert details["dns-cache"] == "2 record(s) for sandbox.smtps.jp"
    assert details["smtp-service"] == "sandbox.smtps.jp:10025 STARTTLS verified, AUTH sasl"
    # The certificate cmc-relay-inbound-cert made at boot, as operators pin it.
    chain_file = postfix_parameters(SETTINGS)["smtpd_tls_chain_files"]
    made = sh(host, f"openssl x509 -in {chain_file} -noout -fingerprint -sha256 -enddate")
    assert re.fullmatch(r"may: TLSv1\.[23], sha256 Fingerprint=[0-9A-F:]{95}, notAfter=.+ GMT",
                        details["inbound-tls"]), details["inbound-tls"]  # fmt: skip
    assert details["inbound-tls"].endswith(", ".join(made.splitlines()))
    assert details["postconf:transport_maps"] == "hash:/etc/postfix/transport"  # expanded
    assert MARK not in result.stdout + result.stderr


def test_dnsmasq_stopped(host: Sandbox) -> None:
    sh(host, "kill $(cat /run/dnsmasq/dnsmasq.pid)")
    try:
        code, failed, printed = verify(host)
    finally:  # the setup script is safe to re-run; it starts dnsmasq again
        host.machine.run(["cmc-relay-setup"], env=BOOT_ENV)
    assert code == 1
    assert set(failed) == {"dnsmasq-running", "dns-cache"}
    assert "FAILED: dnsmasq-running, dns-cache" in printed
    assert verify(host)[0] == 0


def test_a_queue_on_the_root_disk_where_a_queue_volume_is_due(host: Sandbox) -> None:
    """On EC2 relay.env names the queue volume's device (the sandbox's payload does not):
    Postfix's queue must then be on it, or the next replacement loses it."""
    env_file = "/etc/cmc-relay/relay.env"
    staged = host.machine.read(env_file)
    host.machine.write(env_file, staged + "CMC_QUEUE_DEVICE=/dev/sdf\n")
    try:
        code, failed, _ = verify(host)
    finally:
        host.machine.write(env_file, staged)
    assert code == 1
    assert list(failed) == ["queue-volume"]
    assert failed["queue-volume"] == (
        "/var/spool/postfix is on the root disk, not on the cmc-relay-queue volume (/dev/sdf): "
        "see cmc-relay-queue-volume"
    )


def test_password_table_readable_by_others(host: Sandbox) -> None:
    sh(host, "chmod 0644 /etc/postfix/relay_password")
    try:
        code, failed, _ = verify(host)
    finally:
        sh(host, "chmod 0600 /etc/postfix/relay_password")
    assert code == 1
    assert list(failed) == ["password-table-mode"]
    assert "/etc/postfix/relay_password 644/0" in failed["password-table-mode"]


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
def test_a_wrong_postfix_setting(host: Sandbox, name: str, wrong: str) -> None:
    right = postfix_parameters(SETTINGS)[name]
    host.machine.run(["postconf", "-e", f"{name} = {wrong}"])
    try:
        code, failed, _ = verify(host)
    finally:
        host.machine.run(["postconf", "-e", f"{name} = {right}"])
    assert code == 1
    expected = {f"postconf:{name}": f"is {wrong!r}, staged {right!r}"}
    if name == "smtp_tls_security_level":  # nor does the check itself send the key unverified
        expected["smtp-service"] = f"smtp_tls_security_level {wrong}: authMode sasl needs secure"
    assert failed == expected


def test_a_missing_master_cf_service(host: Sandbox) -> None:
    """Without tlsproxy, TLS connection reuse makes every delivery defer."""
    (name, entry), *_ = postfix_services(SETTINGS).items()
    host.machine.run(["postconf", "-MX", name])
    try:
        code, failed, _ = verify(host)
    finally:
        host.machine.run(["postconf", "-M", f"{name} = {entry}"])
    assert code == 1
    assert list(failed) == [f"master.cf:{name}"]
    assert "no entry" in failed[f"master.cf:{name}"]


def test_inbound_starttls_switched_off_on_the_host(host: Sandbox) -> None:
    """may rendered, none in effect: the applications' mail would go in clear text."""
    host.machine.run(["postconf", "-e", "smtpd_tls_security_level = none"])
    host.machine.run(["postfix", "reload"])
    try:
        code, failed, _ = verify(host)
    finally:
        host.machine.run(["postconf", "-e", "smtpd_tls_security_level = may"])
        host.machine.run(["postfix", "reload"])
    assert code == 1
    assert failed == {
        "postconf:smtpd_tls_security_level": "is 'none', staged 'may'",
        "inbound-tls": "STARTTLS not offered, inboundTls may",
    }
    assert verify(host)[0] == 0


def test_resolver_not_asking_the_cache(host: Sandbox) -> None:
    original = host.machine.read("/etc/resolv.conf")
    host.machine.write("/etc/resolv.conf", "nameserver 169.254.169.253\n")
    try:
        code, failed, _ = verify(host)
    finally:
        host.machine.write("/etc/resolv.conf", original)
    assert code == 1
    assert list(failed) == ["resolver"]
    assert "127.0.0.1 first" in failed["resolver"]


def test_networkd_free_to_rewrite_the_resolver(host: Sandbox) -> None:
    """Debian's images run systemd-networkd (no dhclient): each .network gets a drop-in."""
    drop_in = sh(host, "ls /etc/systemd/network/*.network.d/cmc-relay-dns.conf").split()[0]
    saved = host.machine.read(drop_in)
    sh(host, f"rm {drop_in}")
    try:
        code, failed, _ = verify(host)
    finally:
        host.machine.write(drop_in, saved)
    assert code == 1
    assert list(failed) == ["dhcp-dns-override"]
    assert drop_in in failed["dhcp-dns-override"]


@pytest.mark.parametrize(
    "table", ["cmc-relay-sender-access", "cmc-relay-sender-canonical", "cmc-relay-operator"]
)
def test_a_policy_table_changed_on_the_host(host: Sandbox, table: str) -> None:
    path = f"/etc/postfix/{table}"
    original = host.machine.read(path)
    host.machine.write(path, "/./ OK\n" + original)  # e.g. every sender allowed
    try:
        code, failed, _ = verify(host)
    finally:
        host.machine.write(path, original)
    assert code == 1
    assert failed == {"postfix-tables": f"['{table}'] not as staged in /etc/cmc-relay/postfix"}


def test_transport_table_not_compiled_after_a_change(host: Sandbox) -> None:
    sh(host, "touch -d '+1 minute' /etc/postfix/transport")
    try:
        code, failed, _ = verify(host)
    finally:
        sh(host, "touch /etc/postfix/transport && postmap /etc/postfix/transport")
    assert code == 1
    assert list(failed) == ["transport-table"]


def test_skip_marks_checks_as_skipped(host: Sandbox) -> None:
    result = host.machine.run(["cmc-relay-verify", "--skip", "cloud-init", "--skip", "postconf"])
    report = json.loads(result.stdout)
    skipped = [c["name"] for c in report["checks"] if c["detail"] == "skipped"]
    assert skipped == ["cloud-init", *(f"postconf:{n}" for n in postfix_parameters(SETTINGS))]


def test_the_leak_check_finds_a_planted_password(host: Sandbox) -> None:
    host.machine.write("/var/log/planted.log", f"oops {PASSWORD}\n")
    try:
        leaks, searched = host.secret_leaks()
    finally:
        sh(host, "rm /var/log/planted.log")
    assert leaks == ["relay /var/log/planted.log"]
    assert searched > 20


def test_postfix_writes_the_mail_log(host: Sandbox) -> None:
    """maillog_file: Postfix's own log, in the file the CloudWatch agent ships (as root: it
    ships cloud-init's output too, which is root's, mode 0640)."""
    message_id = f"<mail-log-{secrets.token_hex(4)}@example.test>"
    assert host.submit(CLIENT_IP, message_id)["code"] == 250
    host.wait_for_message(message_id)
    log = host.mail_log()
    queue_ids = re.findall(rf"postfix/cleanup\[\d+\]: (\w+): message-id={message_id}", log)
    assert len(queue_ids) == 1, log[-2000:]
    [queue_id] = queue_ids
    assert re.search(rf"postfix/smtp\[\d+\]: {queue_id}: .* status=sent", log), log[-2000:]
    owners = sh(host, f"stat -c %U:%a {MAIL_LOG} /var/log/cloud-init-output.log").split()
    assert owners[0].startswith("root:") and owners[1] == "root:640"
    assert MARK not in log
