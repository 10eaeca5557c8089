"""The cloud-init payload: golden files, parsed back, checked by real cloud-init."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from userdata.render import (
    OS_PROFILES,
    SCRIPT_DIR,
    SSM_AGENT_KEY_PATH,
    USER_DATA_LIMIT,
    aws_ssm_agent_key,
    cloud_config,
    dump_cloud_config,
    pack_user_data,
    parse_main_cf,
    postfix_services,
    render_template,
    render_user_data,
    script,
)
from userdata.settings import OS_NAMES, PLANS, OsName, RelaySettings

GOLDEN = Path(__file__).parent / "golden"
SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
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
    return render_user_data(settings, SECRET_ARN if settings.uses_sasl else None)


def parsed(settings: RelaySettings) -> dict[str, Any]:
    text = render(settings)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert isinstance(document, dict)
    return document


def files_of(document: dict[str, Any]) -> dict[str, str]:
    """write_files by path."""
    return {entry["path"]: entry["content"] for entry in document["write_files"]}


def without_scripts(document: dict[str, Any]) -> dict[str, Any]:
    """The golden view: configuration as written, scripts named only (they are tested below)."""
    entries = [
        {**entry, "content": f"<{Path(entry['path']).name}>"}
        if entry["path"].startswith(f"{SCRIPT_DIR}/")
        else entry
        for entry in document["write_files"]
    ]
    return {**document, "write_files": entries}


def packed_size(settings: RelaySettings) -> int:
    """What EC2 counts against its limit: the gzipped document, before base64."""
    return len(base64.b64decode(pack_user_data(render(settings))))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_payload_matches_golden_file(name: str) -> None:
    golden = GOLDEN / f"{name}.yaml"
    view = dump_cloud_config(without_scripts(parsed(VARIANTS[name])))
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


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_the_largest_usual_payload_still_fits(os_name: OsName) -> None:
    """Pro with SASL, the drain script (replicas > 1), an SSH key and a few networks: Debian's
    payload carries the SSM Agent installer and key on top."""
    settings = RelaySettings(
        allowed_cidrs=tuple(f"10.{i}.0.0/16" for i in range(8)),
        plan="pro",
        subdomain="acme",
        os=os_name,
        host_name="cmc-relay.corp.example",
    )
    ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFq3vQm0mZ1rL8x4m2aQe9Vt7r2hY5cJ0bN6dK3wS1pE ops"
    user_data = render_user_data(settings, SECRET_ARN, ssh_key, drain=True)
    assert len(base64.b64decode(pack_user_data(user_data))) < USER_DATA_LIMIT


def test_payload_refuses_to_exceed_the_limit() -> None:
    # Random-looking networks, so that gzip cannot shrink them away.
    too_many = tuple(str(ipaddress.ip_network((i * 2654435761 % 2**32, 32))) for i in range(4000))
    with pytest.raises(ValueError, match=r"user data is \d+ bytes gzipped; EC2 accepts at most"):
        render(RelaySettings(allowed_cidrs=too_many))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_scripts_decode_to_the_shipped_sources(name: str) -> None:
    files = files_of(parsed(VARIANTS[name]))
    shipped = {path for path in files if path.startswith("/usr/local/sbin/")}
    expected = {"cmc-relay-setup", "cmc-relay-verify"}
    if VARIANTS[name].uses_sasl:
        expected.add("cmc-relay-fetch-secret")
    if not OS_PROFILES[VARIANTS[name].os].ssm_agent_preinstalled:
        expected.add("cmc-relay-install-ssm-agent")
    assert {Path(path).name for path in shipped} == expected
    for path in shipped:
        assert files[path] == script(Path(path).name)


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_packages_and_ca_bundle_fit_the_os(os_name: str) -> None:
    document = parsed(variant("standard", os_name))
    sasl_plugin = "cyrus-sasl-plain" if os_name == "al2023" else "libsasl2-modules"
    assert {"postfix", "dnsmasq", "ca-certificates", sasl_plugin} <= set(document["packages"])
    main_cf = parse_main_cf(files_of(document)["/etc/cmc-relay/main.cf"])
    assert main_cf["smtp_tls_CAfile"] == OS_PROFILES[os_name].ca_file  # type: ignore[index]


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_ssm_agent_is_installed_only_where_the_image_lacks_it(os_name: OsName) -> None:
    profile = OS_PROFILES[os_name]
    document = parsed(variant("trial", os_name))
    files = files_of(document)
    env = files["/etc/cmc-relay/relay.env"]
    assert f"CMC_SSM_AGENT_UNIT={profile.ssm_agent_unit}\n" in env
    shipped = "/usr/local/sbin/cmc-relay-install-ssm-agent" in files
    assert shipped is (not profile.ssm_agent_preinstalled) is os_name.startswith("debian-")
    assert (SSM_AGENT_KEY_PATH in files) is shipped
    assert ("gpgv" in document["packages"]) is shipped  # Debian 13's apt brings sqv, not gpgv
    if shipped:
        assert files[SSM_AGENT_KEY_PATH] == aws_ssm_agent_key()
        assert aws_ssm_agent_key().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
        # The setup script runs it once the relay is configured, and carries on if it fails.
        setup = files["/usr/local/sbin/cmc-relay-setup"]
        assert "install_ssm_agent=/usr/local/sbin/cmc-relay-install-ssm-agent" in setup


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
    text = render_user_data(settings, SECRET_ARN, ssm_agent_key=own)
    assert files_of(yaml.safe_load(text))[SSM_AGENT_KEY_PATH] == own
    assert aws_ssm_agent_key() not in text
    document = cloud_config(settings, SECRET_ARN, ssm_agent_key=own)
    assert files_of(document)[SSM_AGENT_KEY_PATH] == own
    assert files_of(cloud_config(settings, SECRET_ARN))[SSM_AGENT_KEY_PATH] == aws_ssm_agent_key()


def test_guide_settings_g1_to_g11_are_rendered() -> None:
    main_cf = parse_main_cf(
        files_of(parsed(variant("standard", "debian-12")))["/etc/cmc-relay/main.cf"]
    )
    assert main_cf["transport_maps"] == "${default_database_type}:/etc/postfix/transport"  # G1
    assert main_cf["smtp_sasl_auth_enable"] == "yes"  # G6
    assert main_cf["smtp_sasl_password_maps"].endswith(":/etc/postfix/relay_password")
    assert main_cf["smtp_sasl_security_options"].split(", ")[0] == "noanonymous"
    assert main_cf["default_destination_concurrency_limit"] == "10"  # G9
    assert (main_cf["queue_run_delay"], main_cf["minimal_backoff_time"]) == ("5s", "5s")  # G10
    assert main_cf["maximal_backoff_time"] == "10s"
    assert main_cf["smtp_tls_security_level"] == "may"  # G11
    assert main_cf["smtp_tls_loglevel"] == "1"


def test_credentials_never_travel_without_tls() -> None:
    main_cf = parse_main_cf(render_template("main.cf", variant("trial", "debian-12")))
    assert "noplaintext" in main_cf["smtp_sasl_security_options"]
    assert main_cf["smtp_sasl_tls_security_options"] == "noanonymous"
    assert main_cf["smtp_reply_filter"] == "regexp:/etc/postfix/cmc-relay-reply-filter"


@pytest.mark.parametrize(
    ("os_name", "chroot"),
    [("debian-12", "y"), ("debian-13", "y"), ("ubuntu-24.04", "y"), ("al2023", "n")],
)
def test_tlsproxy_service_for_tls_connection_reuse(os_name: OsName, chroot: str) -> None:
    """smtp_tls_connection_reuse needs tlsproxy, which stock master.cf files leave out;
    chrooted like the OS's own services."""
    settings = variant("trial", os_name)
    assert parse_main_cf(render_template("main.cf", settings))["smtp_tls_connection_reuse"] == "yes"
    assert postfix_services(settings) == {
        "tlsproxy/unix": f"tlsproxy unix - - {chroot} - 0 tlsproxy"
    }


def test_ip_mode_sends_no_auth_and_fetches_no_secret() -> None:
    document = parsed(variant("pro", "al2023", "ip"))
    files = files_of(document)
    assert parse_main_cf(files["/etc/cmc-relay/main.cf"])["smtp_sasl_auth_enable"] == "no"
    assert "CMC_SECRET_ARN" not in files["/etc/cmc-relay/relay.env"]
    assert not any("fetch-secret" in path for path in files)


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_transport_keeps_the_hosts_own_name_local(os_name: OsName) -> None:
    settings = RelaySettings(
        allowed_cidrs=("10.0.0.0/16",), os=os_name, host_name="mx.corp.example"
    )
    files = files_of(parsed(settings))
    main_cf = parse_main_cf(files["/etc/cmc-relay/main.cf"])
    entries = [line.split() for line in files["/etc/cmc-relay/transport"].splitlines()]
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
    files = files_of(parsed(settings))
    env = dict(
        line.split("=", 1) for line in files["/etc/cmc-relay/relay.env"].splitlines() if "=" in line
    )
    assert env["CMC_NEXT_HOP"] == "[te.smtps.jp]:587"  # G7: the fetch script's table key
    assert "*     smtp:[te.smtps.jp]:587" in files["/etc/cmc-relay/transport"]
    assert env["CMC_SECRET_ARN"] == SECRET_ARN


def test_dnsmasq_listens_on_loopback_only() -> None:
    conf = render_template("dnsmasq.conf", variant("trial", "debian-12")).splitlines()
    assert {"interface=lo", "bind-interfaces", "listen-address=127.0.0.1"} <= set(conf)  # G13


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_resolver_override_fits_the_os(os_name: str) -> None:
    files = files_of(parsed(variant("trial", os_name)))
    assert "UseDNS=no" in files["/etc/cmc-relay/networkd-no-dns.conf"]
    hook = "/etc/dhcp/dhclient-enter-hooks.d/cmc-relay"
    assert (hook in files) is OS_PROFILES[os_name].dhclient  # type: ignore[index]
    setup = files["/usr/local/sbin/cmc-relay-setup"]
    assert 'echo "nameserver 127.0.0.1"' in setup
    assert "PEERDNS=no" in setup


def test_rotation_timer_uses_the_configured_interval() -> None:
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",), secret_refresh_minutes=15)
    timer = files_of(parsed(settings))["/etc/systemd/system/cmc-relay-fetch-secret.timer"]
    assert "OnUnitActiveSec=15min" in timer


def test_sasl_payload_needs_the_secret_arn() -> None:
    with pytest.raises(ValueError, match="needs the credentials secret's ARN"):
        cloud_config(variant("trial", "debian-12"))


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
    # myhostname set: otherwise postmap looks up this machine's name in DNS first.
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\nmyhostname = test.invalid\n")
    (tmp_path / "master.cf").write_text("")
    table = tmp_path / "reply-filter"
    table.write_text(render_template("reply-filter", variant("trial", "debian-12")))
    result = subprocess.run(
        ["postmap", "-c", str(tmp_path), "-q", reply, f"regexp:{table}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.stdout.strip() or None) == filtered, result.stderr
