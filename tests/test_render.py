"""The cloud-init payload: golden files, parsed back, checked by real cloud-init."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import yaml

from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.render import (
    APPLIES,
    AWS_CLOUDWATCH_AGENT_FINGERPRINT,
    BOOTSTRAP,
    BUNDLE_ENV_PATH,
    CLOUDWATCH_AGENT_CONFIG_PATH,
    MAIL_LOG,
    POINTER_KEY,
    SCRIPT_DIR,
    SSM_AGENT_KEY_PATH,
    USER_DATA_LIMIT,
    Bundle,
    BundleStore,
    aws_ssm_agent_key,
    bundle_path,
    dump_cloud_config,
    pack_user_data,
    parse_main_cf,
    postfix_parameters,
    postfix_services,
    postfix_tables,
    render_bundle,
    render_template,
    render_user_data,
    script,
    without_comments,
)
from cmc_relay.userdata.settings import OS_NAMES, PLANS, OsName, RelaySettings
from tests.host_scripts import load_script

GOLDEN = Path(__file__).parent / "golden"
SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
STORE = BundleStore("relay-payload-0a1b2c3", "ap-northeast-1")
# Regenerate with UPDATE_GOLDEN=1 after an intended change, and review the diff.
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"


def variant(plan: str, os_name: str, auth_mode: str = "sasl") -> RelaySettings:
    return RelaySettings(
        allowed_cidrs=("10.0.0.0/16", "192.168.10.0/24"),
        plan=plan,  # type: ignore[arg-type]
        subdomain="acme" if plan == "pro" else None,
        os=os_name,  # type: ignore[arg-type]
        auth_mode=auth_mode,  # type: ignore[arg-type]
    )


VARIANTS = {
    f"{plan}-{os_name}": variant(plan, os_name) for plan in PLANS for os_name in OS_NAMES
} | {f"pro-ip-{os_name}": variant("pro", os_name, "ip") for os_name in OS_NAMES}


def render(settings: RelaySettings) -> str:
    return render_user_data(settings, store=STORE)


def bundle_for(settings: RelaySettings, drain: bool = False, **options: Any) -> Bundle:
    """The bundle of ``settings``, with the secret's ARN where they need one."""
    return render_bundle(settings, SECRET_ARN if settings.uses_sasl else None, drain, **options)


def parsed(settings: RelaySettings) -> dict[str, Any]:
    text = render(settings)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert isinstance(document, dict)
    return document


def files_of(document: dict[str, Any]) -> dict[str, str]:
    """write_files by path."""
    return {entry["path"]: entry["content"] for entry in document["write_files"]}


def bundled(bundle: Bundle) -> dict[str, tarfile.TarInfo]:
    """The bundle's members by absolute path."""
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        return {f"/{member.name}": member for member in tar.getmembers()}


def bundle_files(bundle: Bundle) -> dict[str, str]:
    """The bundle's files by absolute path."""
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        return {
            f"/{member.name}": tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in tar.getmembers()
        }


def host_files(settings: RelaySettings) -> dict[str, str]:
    """Every file the host gets: the user data's and the bundle's."""
    return files_of(parsed(settings)) | bundle_files(bundle_for(settings))


def named_only(path: str, content: str) -> str:
    """Scripts and keys named only in the golden view (they are tested below)."""
    if path.startswith(f"{SCRIPT_DIR}/") or path == SSM_AGENT_KEY_PATH:
        return f"<{Path(path).name}>"
    return content


def golden_view(settings: RelaySettings) -> dict[str, Any]:
    """The golden view: the user data, and under ``bundle`` the files the bundle installs
    (in its member order, with their modes), configuration as written."""
    document = parsed(settings)
    bundle = bundle_for(settings)
    members, contents = bundled(bundle), bundle_files(bundle)
    entries = [
        {**entry, "content": named_only(entry["path"], entry["content"])}
        for entry in document["write_files"]
    ]
    installed = [
        {"path": path, "content": named_only(path, contents[path]), "mode": f"{member.mode:04o}"}
        for path, member in members.items()
    ]
    return {**document, "write_files": entries, "bundle": installed}


def packed_size(settings: RelaySettings) -> int:
    """What EC2 counts against its limit: the gzipped document, before base64."""
    return len(base64.b64decode(pack_user_data(render(settings))))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_payload_matches_golden_file(name: str) -> None:
    golden = GOLDEN / f"{name}.yaml"
    view = dump_cloud_config(golden_view(VARIANTS[name]))
    if UPDATE_GOLDEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(view)
    assert view == golden.read_text()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_payload_fits_ec2_user_data_limit(name: str) -> None:
    assert packed_size(VARIANTS[name]) < USER_DATA_LIMIT


def test_packed_payload_is_what_cloud_init_unpacks() -> None:
    settings = VARIANTS["trial-debian-12"]
    packed = base64.b64decode(pack_user_data(render(settings)))
    assert packed[:2] == b"\x1f\x8b"  # gzip magic: cloud-init decompresses it itself
    assert gzip.decompress(packed).decode() == render(settings)
    assert pack_user_data(render(settings)) == pack_user_data(render(settings))  # stable bytes


def test_payload_with_many_networks_still_fits() -> None:
    many = tuple(f"10.{i}.0.0/16" for i in range(200))
    settings = RelaySettings(allowed_cidrs=many, os="ubuntu-24.04")
    assert packed_size(settings) < USER_DATA_LIMIT


@pytest.mark.parametrize("certificate_secret", [None, SECRET_ARN.replace("cmc/api", "cmc/cert")])
@pytest.mark.parametrize("os_name", OS_NAMES)
def test_the_largest_usual_payload_still_fits(
    os_name: OsName, certificate_secret: str | None
) -> None:
    """Pro with SASL, the drain script (replicas > 1), an SSH key, a few networks, the whole
    mail policy, the inbound certificate made on the host (its script) or fetched from a
    secret, and a maintenance window: Debian's payload carries the SSM Agent installer and key
    on top."""
    settings = RelaySettings(
        allowed_cidrs=tuple(f"10.{i}.0.0/16" for i in range(8)),
        plan="pro",
        subdomain="acme",
        os=os_name,
        host_name="cmc-relay.corp.example",
        sender_domain="mail.corp.example",
        rewrite_domains=("corp.internal", "build.example"),
        allowed_sender_domains=("mail.corp.example", "corp.example", "news.corp.example"),
        operator_email="mail-ops@corp.example",
        inbound_tls="encrypt",
        inbound_tls_secret_arn=certificate_secret,
        reboot_window="Sat,Sun 04:30",
    )
    ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFq3vQm0mZ1rL8x4m2aQe9Vt7r2hY5cJ0bN6dK3wS1pE ops"
    user_data = render_user_data(settings, ssh_key, drain=True, store=STORE)
    # About 3.7 KB, the bootstrap's (Debian's was 15.7 KB with the scripts inside, 4.5 KB with
    # the configuration inside); the same whatever the configuration.
    assert len(base64.b64decode(pack_user_data(user_data))) < 4 * 1024


def test_payload_refuses_to_exceed_the_limit() -> None:
    # A random-looking SSH key line, so that gzip cannot shrink it away.
    noise = "".join(f"{i * 2654435761 % 2**32:08x}" for i in range(3000))
    with pytest.raises(ValueError, match=r"user data is \d+ bytes gzipped; EC2 accepts at most"):
        render_user_data(variant("trial", "debian-13"), f"ssh-ed25519 {noise}", store=STORE)


def test_networks_no_longer_weigh_on_the_user_data() -> None:
    """Configuration is the bundle's: 4000 networks, which once overflowed EC2's limit,
    leave the user data as it is."""
    too_many = tuple(str(ipaddress.ip_network((i * 2654435761 % 2**32, 32))) for i in range(4000))
    settings = RelaySettings(allowed_cidrs=too_many)
    assert render(settings) == render(RelaySettings(allowed_cidrs=("10.0.0.0/16",)))
    assert "10.0.0.0/16" not in render(settings)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_bundle_holds_every_file_and_the_user_data_only_the_bootstrap(name: str) -> None:
    settings = VARIANTS[name]
    files = files_of(parsed(settings))
    bundled_files = bundle_files(bundle_for(settings))
    scripts = {path for path in bundled_files if path.startswith(SCRIPT_DIR)}
    expected = {"cmc-relay-setup", "cmc-relay-apply", "cmc-relay-verify", "cmc-relay-metrics"}
    expected.add("cmc_relay_host.py")  # what the Python scripts share
    expected.add("cmc-relay-queue-volume")  # used where relay.env names a queue device
    expected.add("cmc-relay-inbound-cert")  # inboundTls may
    if settings.uses_sasl:
        expected.add("cmc-relay-fetch-secret")
    if OS_PROFILES[settings.os].agent_downloads:
        expected.add("cmc-relay-install-agent")
    assert {Path(path).name for path in scripts} == expected
    for path in scripts:
        assert bundled_files[path] == script(Path(path).name)
    # The user data carries only the bootstrap, as it is, and where to find the bundle.
    assert list(files) == [BUNDLE_ENV_PATH, BOOTSTRAP]
    assert files[BOOTSTRAP] == script("cmc-relay-bootstrap")
    assert {"/etc/cmc-relay/main.cf", "/etc/cmc-relay/relay.env"} <= set(bundled_files)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_bootstrap_writes_every_directory_the_bundle_has(name: str) -> None:
    """cmc-relay-bootstrap refuses a member outside its allowed directories: each rendered
    file must be in one."""
    allowed = load_script("cmc-relay-bootstrap").ALLOWED_DIRS
    for path in bundle_files(bundle_for(VARIANTS[name], drain=True)):
        assert str(Path(path).parent).lstrip("/") in allowed, path


def test_bundle_members_are_root_owned_files_with_fixed_times_and_modes() -> None:
    settings = variant("pro", "debian-13")
    members = bundled(bundle_for(settings, drain=True))
    assert list(members) == sorted(members)
    assert f"{SCRIPT_DIR}/cmc-relay-drain" in members
    for path, member in members.items():
        assert member.isreg()
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root")
        assert member.mtime == 0
        command = path.startswith(f"{SCRIPT_DIR}/") and not path.endswith(".py")
        assert member.mode == (0o755 if command else 0o644)
    assert bundle_for(settings, drain=True).data[4:8] == b"\0\0\0\0"  # gzip's mtime


def test_the_same_settings_give_the_same_bundle_and_a_change_a_new_key() -> None:
    settings = variant("pro", "debian-13")
    bundle = bundle_for(settings)
    assert bundle == bundle_for(settings)  # byte for byte
    assert bundle.key == f"payload/{bundle.sha256}.tar.gz"
    assert json.loads(bundle.pointer) == {"key": bundle.key, "sha256": bundle.sha256}
    drained = bundle_for(settings, drain=True)
    assert drained.sha256 != bundle.sha256 and drained.key != bundle.key
    assert bundle_for(settings, ssm_agent_key="another key").sha256 != bundle.sha256
    # Configuration is in the bundle now: a secret ARN or a network is a new bundle.
    other_arn = render_bundle(settings, SECRET_ARN.replace("cmc/api", "other"))
    assert other_arn.sha256 != bundle.sha256
    wider = bundle_for(replace(settings, allowed_cidrs=("10.0.0.0/8",)))
    assert wider.sha256 != bundle.sha256


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_user_data_names_the_pointer_and_installs_the_bundle_first(os_name: OsName) -> None:
    settings = variant("standard", os_name)
    document = parsed(settings)
    pin = dict(line.split("=", 1) for line in files_of(document)[BUNDLE_ENV_PATH].splitlines())
    assert pin == {
        "CMC_BUNDLE_BUCKET": STORE.bucket,
        "CMC_BUNDLE_REGION": STORE.region,
        "CMC_BUNDLE_POINTER": POINTER_KEY,
        "CMC_DRAIN_ON_DELETE": "no",
    }
    assert document["runcmd"] == [[BOOTSTRAP], [f"{SCRIPT_DIR}/cmc-relay-setup"]]
    # cloud-init installs boto3 (packages) before runcmd runs the bootstrap.
    assert "python3-boto3" in document["packages"]
    # Pinned only where no deployment step applies a new bundle (verification none).
    pinned = render_user_data(settings, store=STORE, pinned="ab" * 32)
    assert f"CMC_BUNDLE_PINNED={'ab' * 32}\n" in pinned


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_packages_and_ca_bundle_fit_the_os(os_name: str) -> None:
    document = parsed(variant("standard", os_name))
    sasl_plugin = "cyrus-sasl-plain" if os_name == "al2023" else "libsasl2-modules"
    assert {"postfix", "dnsmasq", "ca-certificates", sasl_plugin} <= set(document["packages"])
    main_cf = parse_main_cf(host_files(variant("standard", os_name))["/etc/cmc-relay/main.cf"])
    assert main_cf["smtp_tls_CAfile"] == OS_PROFILES[os_name].ca_file  # type: ignore[index]


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_agents_are_downloaded_only_where_the_image_and_the_os_lack_them(os_name: OsName) -> None:
    profile = OS_PROFILES[os_name]
    document = parsed(variant("trial", os_name))
    files = host_files(variant("trial", os_name))
    env = files["/etc/cmc-relay/relay.env"]
    assert f"CMC_SSM_AGENT_UNIT={profile.ssm_agent_unit}\n" in env
    downloads = {
        "al2023": "",
        "debian-12": "ssm,cloudwatch",
        "debian-13": "ssm,cloudwatch",
        "ubuntu-24.04": "cloudwatch",  # SSM Agent is in the image, a snap
    }[os_name]
    assert f"CMC_AGENT_DOWNLOADS={downloads}\n" in env
    shipped = "/usr/local/sbin/cmc-relay-install-agent" in files
    assert shipped is (os_name != "al2023")
    assert ("gpgv" in document["packages"]) is shipped  # Debian 13's apt brings sqv, not gpgv
    # AL2023's own repositories carry the CloudWatch agent.
    assert ("amazon-cloudwatch-agent" in document["packages"]) is (os_name == "al2023")
    assert (SSM_AGENT_KEY_PATH in files) is ("ssm" in downloads)
    if "ssm" in downloads:
        assert files[SSM_AGENT_KEY_PATH] == aws_ssm_agent_key()
        assert aws_ssm_agent_key().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    # The CloudWatch agent's key is downloaded with it: relay.env pins AWS's fingerprint.
    pin = f"CMC_CLOUDWATCH_AGENT_FINGERPRINT={AWS_CLOUDWATCH_AGENT_FINGERPRINT}\n"
    assert (pin in env) is ("cloudwatch" in downloads)
    assert AWS_CLOUDWATCH_AGENT_FINGERPRINT == "937616F3450B7D806CBD9725D58167303B789C72"
    assert not any(path.endswith("amazon-cloudwatch-agent.asc") for path in files)
    # The setup script runs the installer once the relay is configured, carries on if it
    # fails, then starts the CloudWatch agent with the payload's config.
    setup = files["/usr/local/sbin/cmc-relay-setup"]
    assert "CMC_CLOUDWATCH_AGENT_FINGERPRINT=${CMC_CLOUDWATCH_AGENT_FINGERPRINT:-} \\\n" in setup
    assert '/cmc-relay-install-agent "$agent" ||' in setup
    assert f"-c file:{CLOUDWATCH_AGENT_CONFIG_PATH} ||" in setup


def test_ssm_agent_units_per_os() -> None:
    units = {name: profile.ssm_agent_unit for name, profile in OS_PROFILES.items()}
    assert units == {
        "al2023": "amazon-ssm-agent",
        "debian-12": "amazon-ssm-agent",
        "debian-13": "amazon-ssm-agent",
        "ubuntu-24.04": "snap.amazon-ssm-agent.amazon-ssm-agent",
    }


def test_a_test_environment_renders_its_own_ssm_agent_key() -> None:
    own = "\n".join(["-----BEGIN PGP PUBLIC KEY BLOCK-----", "", "dGVzdA==", "-----END PGP …"])
    settings = variant("trial", "debian-13")
    bundle = bundle_for(settings, ssm_agent_key=own)
    assert bundle_files(bundle)[SSM_AGENT_KEY_PATH] == own
    assert aws_ssm_agent_key() not in bundle_files(bundle).values()
    assert bundle_files(bundle_for(settings))[SSM_AGENT_KEY_PATH] == aws_ssm_agent_key()


@pytest.mark.parametrize("os_name", ["debian-13", "ubuntu-24.04"])
def test_a_test_environment_renders_its_own_cloudwatch_agent_fingerprint(os_name: OsName) -> None:
    own = "0123456789ABCDEF0123456789ABCDEF01234567"
    bundle = bundle_for(variant("trial", os_name), cloudwatch_agent_fingerprint=own)
    env = bundle_files(bundle)["/etc/cmc-relay/relay.env"]
    assert f"CMC_CLOUDWATCH_AGENT_FINGERPRINT={own}\n" in env
    assert AWS_CLOUDWATCH_AGENT_FINGERPRINT not in env


def test_guide_settings_g1_to_g11_are_rendered() -> None:
    main_cf = parse_main_cf(host_files(variant("standard", "debian-12"))["/etc/cmc-relay/main.cf"])
    assert main_cf["transport_maps"] == "${default_database_type}:/etc/postfix/transport"  # G1
    assert main_cf["smtp_sasl_auth_enable"] == "yes"  # G6
    assert main_cf["smtp_sasl_password_maps"].endswith(":/etc/postfix/relay_password")
    assert main_cf["smtp_sasl_security_options"].split(", ")[0] == "noanonymous"
    assert main_cf["default_destination_concurrency_limit"] == "10"  # G9
    assert (main_cf["queue_run_delay"], main_cf["minimal_backoff_time"]) == ("5s", "5s")  # G10
    assert main_cf["maximal_backoff_time"] == "10s"
    # G11, verified rather than the guide's may (issue 22), against the OS's CA bundle.
    assert main_cf["smtp_tls_security_level"] == "secure"
    assert main_cf["smtp_tls_secure_cert_match"] == "nexthop"
    assert main_cf["smtp_tls_CAfile"] == "/etc/ssl/certs/ca-certificates.crt"
    assert main_cf["smtp_tls_loglevel"] == "1"


def test_credentials_travel_only_over_verified_tls() -> None:
    main_cf = postfix_parameters(variant("trial", "debian-12"))
    assert main_cf["smtp_sasl_security_options"] == "noanonymous, noplaintext"
    assert main_cf["smtp_sasl_tls_security_options"] == "noanonymous, noplaintext"
    assert main_cf["smtp_sasl_tls_verified_security_options"] == "noanonymous"
    assert main_cf["smtp_reply_filter"] == "regexp:/etc/postfix/cmc-relay-reply-filter"


@pytest.mark.parametrize("keep", [False, True])
def test_received_headers_are_removed_unless_kept(keep: bool) -> None:
    settings = dataclasses.replace(variant("trial", "debian-12"), keep_received_headers=keep)
    main_cf = postfix_parameters(settings)
    table = "cmc-relay-smtp-header-checks"
    assert ("smtp_header_checks" in main_cf) is not keep
    assert (table in postfix_tables(settings)) is not keep
    if not keep:
        assert main_cf["smtp_header_checks"] == f"regexp:/etc/postfix/{table}"
        assert postfix_tables(settings)[table].splitlines()[-1] == "/^Received:/ IGNORE"


@pytest.mark.parametrize(
    ("os_name", "chroot"),
    [("debian-12", "y"), ("debian-13", "y"), ("ubuntu-24.04", "y"), ("al2023", "n")],
)
def test_tlsproxy_service_for_tls_connection_reuse(os_name: OsName, chroot: str) -> None:
    """smtp_tls_connection_reuse needs tlsproxy, which stock master.cf files leave out;
    chrooted like the OS's own services."""
    settings = variant("trial", os_name)
    assert postfix_parameters(settings)["smtp_tls_connection_reuse"] == "yes"
    assert postfix_services(settings)["tlsproxy/unix"] == f"tlsproxy unix - - {chroot} - 0 tlsproxy"


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_postfix_logs_to_the_mail_log_through_postlogd(os_name: OsName) -> None:
    """maillog_file on every OS (no syslog daemon on the images), written by postlogd, which
    master.cf must run: Postfix's own entry, as Debian's stock master.cf has it."""
    settings = variant("trial", os_name)
    assert postfix_parameters(settings)["maillog_file"] == MAIL_LOG == "/var/log/cmc-relay/mail.log"
    assert postfix_services(settings) == {
        "tlsproxy/unix": ANY,
        "postlog/unix-dgram": "postlog unix-dgram n - n - 1 postlogd",
    }
    files = host_files(settings)
    # Rotated by a timer of the payload's, not the OS's daily run (which would rotate it twice).
    assert f"{MAIL_LOG} {{\n" in files["/etc/cmc-relay/logrotate.conf"]
    assert "    copytruncate\n" in files["/etc/cmc-relay/logrotate.conf"]
    assert not any(path.startswith("/etc/logrotate.d/") for path in files)
    service = files["/etc/systemd/system/cmc-relay-logrotate.service"]
    assert (
        "ExecStart=/usr/sbin/logrotate --state /var/lib/cmc-relay/logrotate.status "
        "/etc/cmc-relay/logrotate.conf\n" in service
    )
    assert "OnCalendar=*:0/5\n" in files["/etc/systemd/system/cmc-relay-logrotate.timer"]
    setup = files["/usr/local/sbin/cmc-relay-setup"]
    assert "systemctl enable --now cmc-relay-logrotate.timer\n" in setup
    assert "logrotate" in parsed(settings)["packages"]
    assert "mkdir -p /var/log/cmc-relay\n" in files["/usr/local/sbin/cmc-relay-setup"]


CERT_ARN = SECRET_ARN.replace("cmc/api", "cmc/relay-cert")


@pytest.mark.parametrize(
    ("auth_mode", "inbound_tls", "cert_arn", "makes_cert", "fetches"),
    [
        ("sasl", "may", None, True, True),
        ("sasl", "encrypt", CERT_ARN, False, True),
        ("sasl", "none", None, False, True),
        ("ip", "may", None, True, False),
        ("ip", "encrypt", None, True, False),
        ("ip", "may", CERT_ARN, False, True),  # the timer keeps the certificate current
        ("ip", "none", None, False, False),
    ],
)
def test_inbound_tls_ships_the_certificate_maker_or_the_fetcher(
    auth_mode: str, inbound_tls: str, cert_arn: str | None, makes_cert: bool, fetches: bool
) -> None:
    """The self-signed certificate is made on the host only without inboundTlsSecretArn; with
    it, cmc-relay-fetch-secret installs the secret's (in IP mode too) and its timer refreshes it."""
    settings = RelaySettings(
        allowed_cidrs=("10.0.0.0/16",),
        plan="pro",
        subdomain="acme",
        auth_mode=auth_mode,  # type: ignore[arg-type]
        inbound_tls=inbound_tls,  # type: ignore[arg-type]
        inbound_tls_secret_arn=cert_arn,
    )
    files = host_files(settings)
    assert (f"{SCRIPT_DIR}/cmc-relay-inbound-cert" in files) is makes_cert
    fetcher = [
        f"{SCRIPT_DIR}/cmc-relay-fetch-secret",
        "/etc/systemd/system/cmc-relay-fetch-secret.timer",
    ]
    assert [path in files for path in fetcher] == [fetches, fetches]
    env = files["/etc/cmc-relay/relay.env"]
    assert f"CMC_INBOUND_TLS={inbound_tls}\n" in env
    assert (f"CMC_INBOUND_TLS_SECRET_ARN={cert_arn}\n" in env) is (cert_arn is not None)
    # cmc-relay-setup runs each only when the payload has it (either ARN for the fetcher).
    setup = files[f"{SCRIPT_DIR}/cmc-relay-setup"]
    assert 'if [ -x $cert ]; then $cert "$CMC_HOST_NAME"' in setup
    assert '[ -n "${CMC_SECRET_ARN:-}${CMC_INBOUND_TLS_SECRET_ARN:-}" ]' in setup


def test_ip_mode_sends_no_auth_and_fetches_no_secret() -> None:
    files = host_files(variant("pro", "al2023", "ip"))
    assert parse_main_cf(files["/etc/cmc-relay/main.cf"])["smtp_sasl_auth_enable"] == "no"
    assert "CMC_SECRET_ARN" not in files["/etc/cmc-relay/relay.env"]
    assert not any("fetch-secret" in path for path in files)


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_transport_keeps_the_hosts_own_name_local(os_name: OsName) -> None:
    settings = RelaySettings(
        allowed_cidrs=("10.0.0.0/16",), os=os_name, host_name="mx.corp.example"
    )
    files = host_files(settings)
    main_cf = parse_main_cf(files["/etc/cmc-relay/main.cf"])
    entries = [line.split() for line in files["/etc/cmc-relay/postfix/transport"].splitlines()]
    table = {e[0]: e[1:] for e in entries if e and not e[0].startswith("#")}
    # G2: localhost names and exactly myhostname (and the short name `hostname` prints) map local.
    for local in ("localhost", "localhost.localdomain", main_cf["myhostname"], "mx"):
        assert table[local] == [":"]
    assert table["*"] == ["smtp:[sandbox.smtps.jp]:10025"]  # G3
    # The payload gives the host exactly that name, and puts it in /etc/hosts (G14).
    document = parsed(settings)
    assert (document["hostname"], document["fqdn"]) == ("mx", "mx.corp.example")
    assert document["manage_etc_hosts"] is True


def test_password_table_key_equals_the_next_hop() -> None:
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",), smtp_port=587, plan="standard")
    files = host_files(settings)
    env = dict(
        line.split("=", 1) for line in files["/etc/cmc-relay/relay.env"].splitlines() if "=" in line
    )
    assert env["CMC_NEXT_HOP"] == "[te.smtps.jp]:587"  # G7: the fetch script's table key
    assert "*     smtp:[te.smtps.jp]:587" in files["/etc/cmc-relay/postfix/transport"]
    assert env["CMC_SECRET_ARN"] == SECRET_ARN


def test_dnsmasq_listens_on_loopback_only() -> None:
    conf = render_template(
        "/etc/dnsmasq.d/cmc-relay.conf", variant("trial", "debian-12")
    ).splitlines()
    assert {"interface=lo", "bind-interfaces", "listen-address=127.0.0.1"} <= set(conf)  # G13


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_resolver_override_fits_the_os(os_name: str) -> None:
    files = host_files(variant("trial", os_name))
    assert "UseDNS=no" in files["/etc/cmc-relay/networkd-no-dns.conf"]
    # No supported image runs dhclient (Debian's, Ubuntu's and AL2023's use systemd-networkd).
    assert not any(path.startswith("/etc/dhcp/") for path in files)
    setup = files["/usr/local/sbin/cmc-relay-setup"]
    assert 'echo "nameserver 127.0.0.1"' in setup
    assert "PEERDNS=no" in setup


def test_rotation_timer_uses_the_configured_interval() -> None:
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",), secret_refresh_minutes=15)
    timer = host_files(settings)["/etc/systemd/system/cmc-relay-fetch-secret.timer"]
    assert "OnUnitActiveSec=15min" in timer


def test_sasl_payload_needs_the_secret_arn() -> None:
    with pytest.raises(ValueError, match="needs the credentials secret's ARN"):
        render_bundle(variant("trial", "debian-12"))


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed")
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_real_cloud_init_accepts_the_payload(name: str, tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text(render(VARIANTS[name]))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(user_data)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed")
def test_real_cloud_init_rejects_a_broken_payload(tmp_path: Path) -> None:
    """The schema check above can fail: a wrong type in a known key is caught."""
    document = parsed(variant("trial", "debian-12"))
    document["write_files"][0]["permissions"] = ["0644"]
    user_data = tmp_path / "user-data"
    user_data.write_text(dump_cloud_config(document))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(user_data)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


@pytest.mark.skipif(shutil.which("postmap") is None, reason="Postfix is not installed")
@pytest.mark.parametrize(
    ("reply", "filtered"),
    [
        ("530 5.7.0 Authentication required", "454 4.7.0 Authentication required"),
        ("530-5.7.0 Authentication required", "454-4.7.0 Authentication required"),
        ("530 Authentication required", "454 Authentication required"),
        ("250 2.0.0 Ok: queued", None),
        ("535 5.7.8 Authentication credentials invalid", None),
    ],
)
def test_reply_filter_defers_what_would_bounce_unauthenticated_mail(
    reply: str, filtered: str | None, tmp_path: Path
) -> None:
    """Real postmap reads the rendered regexp table exactly as the smtp client will."""
    table = postfix_tables(variant("trial", "debian-12"))["cmc-relay-reply-filter"]
    assert postmap_query(tmp_path, table, reply) == filtered


def postmap_query(directory: Path, table: str, key: str) -> str | None:
    """What real postmap finds for ``key`` in a regexp table, as Postfix's daemons will."""
    # myhostname set: otherwise postmap looks up this machine's name in DNS first.
    (directory / "main.cf").write_text("compatibility_level = 3.6\nmyhostname = test.invalid\n")
    (directory / "master.cf").write_text("")
    path = directory / "table"
    path.write_text(table)
    result = subprocess.run(
        ["postmap", "-c", str(directory), "-q", key, f"regexp:{path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1) and not result.stderr, result.stderr
    return result.stdout.strip() or None


POLICY = RelaySettings(
    allowed_cidrs=("10.0.0.0/16",),
    sender_domain="example.com",
    rewrite_domains=("corp.internal",),
    allowed_sender_domains=("example.com", "example.org"),
    operator_email="ops@example.net",
)
POLICY_TABLES = {
    "sender_canonical_maps": "cmc-relay-sender-canonical",
    "smtpd_sender_restrictions": "cmc-relay-sender-access",
    "virtual_alias_maps": "cmc-relay-operator",
}


def test_mail_policy_is_rendered_only_when_configured() -> None:
    default = variant("trial", "debian-13")
    main_cf = postfix_parameters(default)
    assert not POLICY_TABLES.keys() & main_cf.keys()
    assert not POLICY_TABLES.values() & postfix_tables(default).keys()
    assert "smtpd_delay_reject" not in main_cf  # Postfix's default: reject at RCPT

    main_cf = postfix_parameters(POLICY)
    for parameter, table in POLICY_TABLES.items():
        assert main_cf[parameter].endswith(f"regexp:/etc/postfix/{table}")
    assert main_cf["smtpd_delay_reject"] == "no"  # refused at MAIL FROM
    assert main_cf["local_header_rewrite_clients"].endswith("permit_mynetworks")
    staged = host_files(POLICY)
    for table in POLICY_TABLES.values():
        assert f"/etc/cmc-relay/postfix/{table}" in staged


@pytest.mark.parametrize(
    "settings", [variant("trial", "debian-13"), POLICY], ids=["default", "policy"]
)
def test_every_table_main_cf_names_is_staged(settings: RelaySettings) -> None:
    """cmc-relay-setup installs /etc/cmc-relay/postfix/* into /etc/postfix: a table main.cf
    names but the payload lacks would leave Postfix refusing mail."""
    named = {
        path.removeprefix("/etc/postfix/")
        for value in postfix_parameters(settings).values()
        for path in re.findall(r":(/etc/postfix/[\w.-]+)", value)
    }
    assert named - {"relay_password"} == postfix_tables(settings).keys()


def test_every_local_domain_is_delivered_locally() -> None:
    """mydestination and the transport table's local entries agree (G2): a name in one but
    not the other would be relayed to the service, or delivered nowhere."""
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",), host_name="mx.corp.example")
    destinations = postfix_parameters(settings)["mydestination"].split(", ")
    transport = postfix_tables(settings)["transport"].splitlines()
    local = [line.split()[0] for line in transport if line.endswith(" :")]
    assert local == destinations
    assert "localhost.corp.example" in destinations  # localhost.$mydomain, as Postfix's default


@pytest.mark.parametrize(
    ("sender", "verdict"),
    [
        ("<>", "OK"),  # bounces
        ("app@example.com", "OK"),
        ("app@EXAMPLE.ORG", "OK"),
        ("root", "OK"),  # rewritten to root@example.com first
        ("root@localhost", "OK"),
        ("cron@ip-10-0-1-5.ap-northeast-1.compute.internal", "OK"),
        ("build@ci.corp.internal", "OK"),  # rewriteDomains, with subdomains
        ("app@mail.example.com", "REJECT"),  # subdomains of an allowed domain are not
        ("app@example.com.attacker.test", "REJECT"),
        ("ceo@attacker.test", "REJECT"),
        ("app@corp.internal.attacker.test", "REJECT"),
    ],
)
def test_sender_access_table(sender: str, verdict: str, tmp_path: Path) -> None:
    table = postfix_tables(POLICY)["cmc-relay-sender-access"]
    answer = postmap_query(tmp_path, table, sender) or ""
    assert answer.split()[0] == verdict
    if verdict == "REJECT":
        assert answer.startswith("REJECT 5.7.1 ") and "allowedSenderDomains" in answer


@pytest.mark.parametrize(
    ("sender", "rewritten"),
    [
        ("root@cmc-relay.internal", "root@example.com"),  # unqualified, after myorigin
        ("cron@ip-10-0-1-5.ec2.internal", "cron@example.com"),
        ("a.b+c@[10.0.1.5]", "a.b+c@example.com"),
        ("app@client.example", None),
        ("app@notcorp.internal.example", None),
    ],
)
def test_sender_canonical_table(sender: str, rewritten: str | None, tmp_path: Path) -> None:
    table = postfix_tables(POLICY)["cmc-relay-sender-canonical"]
    assert postmap_query(tmp_path, table, sender) == rewritten


@pytest.mark.parametrize(
    ("recipient", "forwarded"),
    [
        ("root@cmc-relay.internal", "ops@example.net"),
        ("postmaster@localhost", "ops@example.net"),
        ("MAILER-DAEMON@cmc-relay", "ops@example.net"),
        ("cron@localhost.internal", "ops@example.net"),
        ("user@example.com", None),
        ("root@cmc-relay.internal.example.com", None),
    ],
)
def test_operator_table(recipient: str, forwarded: str | None, tmp_path: Path) -> None:
    table = postfix_tables(POLICY)["cmc-relay-operator"]
    assert postmap_query(tmp_path, table, recipient) == forwarded


def test_per_client_limits_bind_every_client_but_loopback() -> None:
    default = postfix_parameters(RelaySettings(allowed_cidrs=("10.0.0.0/16",)))
    assert default["smtpd_client_message_rate_limit"] == "1000"
    assert default["smtpd_client_recipient_rate_limit"] == "5000"
    assert default["smtpd_client_connection_count_limit"] == "20"
    assert default["anvil_rate_time_unit"] == "60s"  # the rates are per minute
    # Not Postfix's default ($mynetworks), which would exempt the applications themselves.
    assert default["smtpd_client_event_limit_exceptions"] == "127.0.0.0/8 [::1]/128"
    changed = RelaySettings(
        allowed_cidrs=("10.0.0.0/16",),
        client_message_rate_limit=0,
        client_recipient_rate_limit=60,
        client_connection_limit=5,
    )
    main_cf = postfix_parameters(changed)
    assert main_cf["smtpd_client_message_rate_limit"] == "0"  # no limit
    assert main_cf["smtpd_client_recipient_rate_limit"] == "60"
    assert main_cf["smtpd_client_connection_count_limit"] == "5"


def test_every_os_has_one_profile() -> None:
    assert tuple(OS_PROFILES) == OS_NAMES


def test_every_file_the_applies_table_names_is_one_a_host_can_get() -> None:
    """A path in APPLIES that no template, script or generated file has (a typo, a file moved
    in the tree) would leave its condition unused and the file on every host."""
    everything = dataclasses.replace(POLICY, os="debian-13", reboot_window="Sat,Sun 04:30")
    files = files_of(parsed(everything)) | bundle_files(bundle_for(everything, drain=True))
    assert {bundle_path(path) for path in APPLIES} <= files.keys()


def test_a_template_becomes_the_file_at_its_place_in_the_tree() -> None:
    """templates/etc/dnsmasq.d/cmc-relay.conf.j2 is /etc/dnsmasq.d/cmc-relay.conf on the host;
    Postfix's tables travel staged, for cmc-relay-setup to install under the same name."""
    settings = variant("trial", "debian-13")
    files = bundle_files(bundle_for(settings))
    assert files["/etc/dnsmasq.d/cmc-relay.conf"] == without_comments(
        render_template("/etc/dnsmasq.d/cmc-relay.conf", settings)
    )
    assert files["/etc/cmc-relay/postfix/transport"] == without_comments(
        postfix_tables(settings)["transport"]
    )
