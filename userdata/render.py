"""Render the relay host's cloud-init payload: pure functions from settings to files.

Every file the host gets (configuration from templates laid out like the files they become,
and the on-host scripts as they are) goes in the bundle: a tar.gz in S3, stored under its
SHA-256, which a pointer object names. The user data, a ``#cloud-config`` document, holds only
what the bootstrap needs to find the pointer and the OS's own settings, so a configuration
change leaves it as it was (the host applies the new bundle in place, ``cmc-relay-apply``)
and only a new bootstrap or OS setting replaces the host. Nothing secret is rendered: the host
fetches its credentials by ARN at boot.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import ipaddress
import json
import tarfile
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import jinja2
import yaml

from cmc_relay.userdata.metrics import DEFAULT_MONITORING, Monitoring
from cmc_relay.userdata.settings import REBOOT_STAGGER_MINUTES, OsName, RelaySettings

USER_DATA_LIMIT: Final = 16 * 1024  # EC2 refuses user data above 16 KB (before base64)
STAGE_DIR: Final = "/etc/cmc-relay"
SCRIPT_DIR: Final = "/usr/local/sbin"
UNIT_DIR: Final = "/etc/systemd/system"
# Postfix's lookup tables, installed into /etc/postfix under the same names.
POSTFIX_STAGE_DIR: Final = f"{STAGE_DIR}/postfix"
# What the metrics publisher publishes, and where (userdata.metrics.publisher_config).
METRICS_CONFIG_PATH: Final = f"{STAGE_DIR}/metrics.json"
# Where the bundle's pointer is, for cmc-relay-bootstrap and cmc-relay-apply.
BUNDLE_ENV_PATH: Final = f"{STAGE_DIR}/bundle.env"
# The S3 object naming the current bundle, {"key", "sha256"}: a host boots with it.
POINTER_KEY: Final = "payload/current.json"
BOOTSTRAP: Final = f"{SCRIPT_DIR}/cmc-relay-bootstrap"
# Postfix's log (maillog_file): read by the metrics publisher, shipped by the CloudWatch agent.
# A directory of its own, which no OS's syslog or logrotate configuration touches.
MAIL_LOG: Final = "/var/log/cmc-relay/mail.log"
# The mail log's rotation, run by a timer of ours (not the OS's daily logrotate run).
LOGROTATE_CONFIG_PATH: Final = f"{STAGE_DIR}/logrotate.conf"
# After the stock 20auto-upgrades (apt reads apt.conf.d in order, later files win).
AUTO_UPGRADES_PATH: Final = "/etc/apt/apt.conf.d/21cmc-relay-auto-upgrades"
# Where the agent's documentation keeps its config; cmc-relay-setup runs fetch-config on it.
CLOUDWATCH_AGENT_CONFIG_PATH: Final = (
    "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json"
)
_CONFIG_FILE: Final = {"owner": "root:root", "permissions": "0644"}
# The device name EC2 attaches each host's queue volume under (the component's attachment).
QUEUE_DEVICE: Final = "/dev/sdf"


@dataclass(frozen=True)
class OsProfile:
    """What differs between the supported operating systems."""

    packages: tuple[str, ...]
    ca_file: str
    login_user: str
    dhclient: bool  # the OS's DHCP client is dhclient (else systemd-networkd)
    ssm_agent_preinstalled: bool  # the image ships SSM Agent; else the payload installs it
    ssm_agent_unit: str  # the agent's systemd unit (after our install, where we install it)
    # The OS's repositories carry the CloudWatch agent (a package above); else the payload
    # downloads it from AWS.
    cloudwatch_agent_packaged: bool
    # Security updates by unattended-upgrades (Debian, Ubuntu; a package above); Amazon Linux
    # 2023 locks its repositories to the image's release, so its updates come with a new image.
    unattended_upgrades: bool = False

    @property
    def agent_downloads(self) -> tuple[str, ...]:
        """The agents cmc-relay-install-agent fetches from AWS at first boot, by its names."""
        missing = {
            "ssm": not self.ssm_agent_preinstalled,
            "cloudwatch": not self.cloudwatch_agent_packaged,
        }
        return tuple(name for name, download in missing.items() if download)


# logrotate rotates the mail log; minimal images may lack it.
_COMMON_PACKAGES = ("postfix", "dnsmasq", "ca-certificates", "python3-boto3", "logrotate")
# Checks the agent packages' signatures; Debian 13's apt uses sqv, so gpgv may be absent.
_AGENT_VERIFIER = "gpgv"
# Debian's official EC2 images (bookworm and trixie) configure the network with netplan,
# systemd-networkd and systemd-resolved; no dhclient. They ship no SSM Agent either (AWS
# documents installing it by hand on Debian): cmc-relay-install-agent does, and the CloudWatch
# agent, which no Debian or Ubuntu repository carries.
_DEBIAN = OsProfile(
    packages=(*_COMMON_PACKAGES, "libsasl2-modules", _AGENT_VERIFIER, "unattended-upgrades"),
    ca_file="/etc/ssl/certs/ca-certificates.crt",
    login_user="admin",
    dhclient=False,
    ssm_agent_preinstalled=False,
    ssm_agent_unit="amazon-ssm-agent",
    cloudwatch_agent_packaged=False,
    unattended_upgrades=True,
)
OS_PROFILES: Final[dict[OsName, OsProfile]] = {
    "al2023": OsProfile(
        packages=(*_COMMON_PACKAGES, "cyrus-sasl-plain", "amazon-cloudwatch-agent"),
        ca_file="/etc/pki/tls/certs/ca-bundle.crt",
        login_user="ec2-user",
        dhclient=False,
        ssm_agent_preinstalled=True,
        ssm_agent_unit="amazon-ssm-agent",
        cloudwatch_agent_packaged=True,
    ),
    "debian-12": _DEBIAN,
    "debian-13": _DEBIAN,
    "ubuntu-24.04": OsProfile(
        packages=(*_COMMON_PACKAGES, "libsasl2-modules", _AGENT_VERIFIER, "unattended-upgrades"),
        ca_file="/etc/ssl/certs/ca-certificates.crt",
        login_user="ubuntu",
        dhclient=False,
        ssm_agent_preinstalled=True,  # as a snap
        ssm_agent_unit="snap.amazon-ssm-agent.amazon-ssm-agent",
        cloudwatch_agent_packaged=False,
        unattended_upgrades=True,
    ),
}


def postfix_network(cidr: str) -> str:
    """Postfix writes IPv6 networks as ``[addr]/len`` in mynetworks."""
    network = ipaddress.ip_network(cidr)
    if network.version == 6:
        return f"[{network.network_address.compressed}]/{network.prefixlen}"
    return network.compressed


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("cmc_relay.userdata", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # config files, not HTML
)
_templates.filters["postfix_network"] = postfix_network
_templates.globals["mail_log"] = MAIL_LOG


def regexp_literal(domain: str) -> str:
    """A validated domain name as a POSIX regular expression matching exactly it."""
    return domain.replace(".", r"\.")


def regexp_domain(domain: str) -> str:
    """A domain name as a regular expression matching it and its subdomains."""
    return rf"(.+\.)?{regexp_literal(domain)}"


_templates.filters["regexp_literal"] = regexp_literal
_templates.filters["regexp_domain"] = regexp_domain


def render_template(
    name: str, settings: RelaySettings, secret_arn: str | None = None, **extra: object
) -> str:
    return _templates.get_template(f"{name}.j2").render(
        s=settings, os=OS_PROFILES[settings.os], secret_arn=secret_arn, **extra
    )


def script(name: str) -> str:
    return resources.files("cmc_relay.userdata").joinpath("scripts", name).read_text()


SSM_AGENT_KEY_PATH: Final = f"{STAGE_DIR}/amazon-ssm-agent.asc"
AGENT_PINS_PATH: Final = f"{STAGE_DIR}/agent-pins.json"


def agent_pins() -> str:
    """The agent packages' pins, by package: {"version": ..., "sha256": {ARCH: ...}}, or null
    for the latest (signature only). The one place to pin them (README, "When AWS rotates")."""
    return resources.files("cmc_relay.userdata").joinpath("keys", "agent-pins.json").read_text()


def aws_ssm_agent_key() -> str:
    """AWS's published SSM Agent public key (ASCII armored), which signs the agent's packages:
    1C5B 395C BE5E 74E2 F1CA 2159 2784 DBF3 88D1 9D46, "SSM Agent <ssm-agent-signer@amazon.com>",
    created 2026-06-04, expires 2027-11-25. It is the current key of AWS's "Verifying the
    signature of SSM Agent" (docs.aws.amazon.com/systems-manager/latest/userguide/
    verify-agent-signature.html#verify-agent-signature-current), as AWS's aws/eks-hybrid
    copies it (internal/ssm/source.go, commit d5bd0d0); tests/data/ holds that block verbatim.
    Shipped as ``gpg --export-options export-minimal`` gives it: the key, its user ID and AWS's
    self-signature, byte for byte; only the certification by AWS's older key, which gpgv does
    not use, is left out. Replace both when AWS publishes the next key."""
    return (
        resources.files("cmc_relay.userdata").joinpath("keys", "amazon-ssm-agent.asc").read_text()
    )


# The fingerprint of AWS's CloudWatch agent public key, "Amazon CloudWatch Agent" (RSA 2048), as
# AWS documents it ("Verify the signature of the CloudWatch agent package"). The installer
# downloads the key (amazon-cloudwatch-agent.gpg) beside the package and accepts only a
# signature whose primary key has this fingerprint; relay.env carries it.
AWS_CLOUDWATCH_AGENT_FINGERPRINT: Final = "937616F3450B7D806CBD9725D58167303B789C72"


def cloudwatch_agent_config(monitoring: Monitoring) -> dict[str, Any]:
    """The CloudWatch agent's config: the mail log to the relay's log group, one stream per
    host; cloud-init's output (the payload's scripts report there; nothing secret) beside it.
    No metrics section: cmc-relay's publisher sends the metrics (userdata.metrics)."""

    def collect(path: str, stream: str) -> dict[str, str]:
        return {
            "file_path": path,
            "log_group_name": monitoring.log_group,
            "log_stream_name": stream,
        }

    return {
        # cloud-init's output is root's, mode 0640 (the mail log is root's too, 0644).
        "agent": {"run_as_user": "root"},
        "logs": {
            "logs_collected": {
                "files": {
                    "collect_list": [
                        collect(MAIL_LOG, "{instance_id}"),
                        collect("/var/log/cloud-init-output.log", "{instance_id}/cloud-init"),
                    ]
                }
            }
        },
    }


def _script_file(name: str) -> dict[str, str]:
    """An on-host script, installed as a root-owned command."""
    return {
        "path": f"{SCRIPT_DIR}/{name}",
        "content": script(name),
        "owner": "root:root",
        "permissions": "0755",
    }


# What the on-host Python scripts share, beside them: a script's own directory comes first on
# its sys.path.
SCRIPT_HELPER: Final = "cmc_relay_host.py"


def parse_main_cf(text: str) -> dict[str, str]:
    """``name = value`` lines of a main.cf fragment (or of master.cf entries in ``postconf -M``
    form, ``name/type = entry``), in order; comments and blanks skipped."""
    parameters = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            parameters[name.strip()] = value.strip()
    return parameters


def postfix_parameters(settings: RelaySettings) -> dict[str, str]:
    """The main.cf parameters the host applies: for tests and the on-host verifier alike."""
    return parse_main_cf(render_template("main.cf", settings))


def postfix_tables(settings: RelaySettings) -> dict[str, str]:
    """The lookup tables main.cf names, by their file name in /etc/postfix: their content."""
    templates = {"transport": "transport", "cmc-relay-reply-filter": "reply-filter"}
    if settings.sender_domain:
        templates["cmc-relay-sender-canonical"] = "sender-canonical"
    if settings.allowed_sender_domains:
        templates["cmc-relay-sender-access"] = "sender-access"
    if settings.operator_email:
        templates["cmc-relay-operator"] = "operator"
    if not settings.keep_received_headers:
        templates["cmc-relay-smtp-header-checks"] = "smtp-header-checks"
    return {name: render_template(template, settings) for name, template in templates.items()}


def postfix_services(settings: RelaySettings) -> dict[str, str]:
    """The master.cf services the host adds with ``postconf -M``: entry by name/type."""
    return parse_main_cf(render_template("master.cf", settings))


def without_comments(text: str) -> str:
    """A config file without its comment and blank lines: the templates explain every setting,
    and the payload must fit EC2's user data limit."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if line.strip() and not line.lstrip().startswith("#"))


def write_files(
    settings: RelaySettings,
    secret_arn: str | None,
    drain: bool = False,
    *,
    ssm_agent_key: str | None = None,
    cloudwatch_agent_fingerprint: str = AWS_CLOUDWATCH_AGENT_FINGERPRINT,
    monitoring: Monitoring = DEFAULT_MONITORING,
    queue_device: str | None = None,
    pins: str | None = None,
) -> list[dict[str, str]]:
    """Every file the bundle gives the host, in order; ``drain`` adds the script a
    deployment runs before deleting the host. Where the image lacks SSM Agent or the OS's
    repositories the CloudWatch agent, the installer and what it trusts: the public key it
    checks SSM Agent against (``ssm_agent_key``, ASCII armored; None: AWS's), and in relay.env
    the fingerprint the CloudWatch agent's signing key must have (AWS's by default); a test
    environment passes its own signing key's, and with ``pins`` its packages' version and
    SHA-256 (JSON as ``agent_pins``; None: the shipped pins). ``monitoring``: where metrics and
    mail log go. ``queue_device``: where the host's queue volume is attached, which Postfix's
    queue must be on before Postfix starts (None: the queue stays on the root disk, as in a
    twin or chroot)."""

    def config_file(path: str, template: str, **extra: Any) -> dict[str, str]:
        content = without_comments(render_template(template, settings, secret_arn, **extra))
        return {"path": path, "content": content, **_CONFIG_FILE}

    tables = [
        {
            "path": f"{POSTFIX_STAGE_DIR}/{name}",
            "content": without_comments(content),
            **_CONFIG_FILE,
        }
        for name, content in postfix_tables(settings).items()
    ]
    files = [
        config_file(
            f"{STAGE_DIR}/relay.env",
            "relay.env",
            cloudwatch_agent_fingerprint=cloudwatch_agent_fingerprint,
            queue_device=queue_device,
        ),
        config_file(f"{STAGE_DIR}/main.cf", "main.cf"),
        config_file(f"{STAGE_DIR}/master.cf", "master.cf"),
        *tables,
        config_file(f"{STAGE_DIR}/networkd-no-dns.conf", "networkd-no-dns.conf"),
        config_file("/etc/dnsmasq.d/cmc-relay.conf", "dnsmasq.conf"),
        {
            "path": METRICS_CONFIG_PATH,
            "content": json.dumps(monitoring.publisher_config(), separators=(",", ":")) + "\n",
            **_CONFIG_FILE,
        },
        config_file(LOGROTATE_CONFIG_PATH, "logrotate"),
        config_file(
            f"{UNIT_DIR}/cmc-relay-logrotate.service",
            "logrotate.service",
            logrotate_config=LOGROTATE_CONFIG_PATH,
        ),
        config_file(f"{UNIT_DIR}/cmc-relay-logrotate.timer", "logrotate.timer"),
        {
            "path": CLOUDWATCH_AGENT_CONFIG_PATH,
            "content": json.dumps(cloudwatch_agent_config(monitoring), separators=(",", ":")),
            **_CONFIG_FILE,
        },
        {**_script_file(SCRIPT_HELPER), "permissions": "0644"},  # a module, not a command
        _script_file("cmc-relay-setup"),
        _script_file("cmc-relay-apply"),
        _script_file("cmc-relay-verify"),
        _script_file("cmc-relay-metrics"),
        _script_file("cmc-relay-queue-volume"),
        config_file(f"{UNIT_DIR}/cmc-relay-metrics.service", "metrics.service"),
        config_file(f"{UNIT_DIR}/cmc-relay-metrics.timer", "metrics.timer"),
    ]
    if OS_PROFILES[settings.os].unattended_upgrades:
        files.append(config_file(AUTO_UPGRADES_PATH, "auto-upgrades"))
    if settings.reboot_window is not None:  # the maintenance window for reboots
        stagger = {"stagger_minutes": REBOOT_STAGGER_MINUTES}
        files += [
            _script_file("cmc-relay-reboot"),
            config_file(f"{UNIT_DIR}/cmc-relay-reboot.service", "reboot.service", **stagger),
            config_file(f"{UNIT_DIR}/cmc-relay-reboot.timer", "reboot.timer"),
        ]
    if settings.inbound_tls != "none" and settings.inbound_tls_secret_arn is None:
        files.append(_script_file("cmc-relay-inbound-cert"))  # the self-signed certificate
    if OS_PROFILES[settings.os].dhclient:
        files.append(config_file("/etc/dhcp/dhclient-enter-hooks.d/cmc-relay", "dhclient-hook"))
    if settings.uses_sasl or settings.inbound_tls_secret_arn:  # the secrets, kept current
        files += [
            _script_file("cmc-relay-fetch-secret"),
            config_file(f"{UNIT_DIR}/cmc-relay-fetch-secret.service", "fetch-secret.service"),
            config_file(f"{UNIT_DIR}/cmc-relay-fetch-secret.timer", "fetch-secret.timer"),
        ]
    profile = OS_PROFILES[settings.os]
    if "ssm" in profile.agent_downloads:
        key = aws_ssm_agent_key() if ssm_agent_key is None else ssm_agent_key
        files.append({"path": SSM_AGENT_KEY_PATH, "content": key, **_CONFIG_FILE})
    if profile.agent_downloads:
        files.append(_script_file("cmc-relay-install-agent"))
        content = agent_pins() if pins is None else pins
        files.append({"path": AGENT_PINS_PATH, "content": content, **_CONFIG_FILE})
    if drain:
        files.append(_script_file("cmc-relay-drain"))
    return files


@dataclass(frozen=True)
class Bundle:
    """Every file of the host as a tar.gz, and its SHA-256 (hex), which the pointer names."""

    data: bytes
    sha256: str

    @property
    def key(self) -> str:
        """Its S3 key: named by its hash, a new bundle never overwrites one a host reads."""
        return bundle_key(self.sha256)

    @property
    def pointer(self) -> str:
        """The pointer object's content naming this bundle (POINTER_KEY)."""
        return json.dumps({"key": self.key, "sha256": self.sha256}, sort_keys=True) + "\n"


def bundle_key(sha256: str) -> str:
    """Where the bundle of that hash is stored; cmc-relay-apply fetches it by the hash alone."""
    return f"payload/{sha256}.tar.gz"


@dataclass(frozen=True)
class BundleStore:
    """Where the bundle is stored: an S3 bucket and its region."""

    bucket: str
    region: str


def pack_bundle(files: list[dict[str, str]]) -> Bundle:
    """``write_files`` entries as a deterministic tar.gz: members sorted, owned by root, mtime
    0 (tar's and gzip's), so the same files give the same bytes and the same hash."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(files, key=lambda entry: entry["path"]):
            content = entry["content"].encode()
            member = tarfile.TarInfo(entry["path"].lstrip("/"))
            member.size, member.mode = len(content), int(entry["permissions"], 8)
            member.uname = member.gname = "root"
            tar.addfile(member, io.BytesIO(content))
    data = gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)
    return Bundle(data, hashlib.sha256(data).hexdigest())


def render_bundle(
    settings: RelaySettings,
    secret_arn: str | None = None,
    drain: bool = False,
    *,
    ssm_agent_key: str | None = None,
    cloudwatch_agent_fingerprint: str = AWS_CLOUDWATCH_AGENT_FINGERPRINT,
    monitoring: Monitoring = DEFAULT_MONITORING,
    queue_device: str | None = None,
    pins: str | None = None,
) -> Bundle:
    """The bundle a host of ``settings`` installs: every file of ``write_files`` (arguments as
    its). ``ssm_agent_key`` and ``cloudwatch_agent_fingerprint`` replace what the agent
    installer trusts (AWS's by default), ``pins`` the agents' packages;
    ``monitoring`` says where metrics and logs go;
    ``queue_device`` where the queue volume is attached (``QUEUE_DEVICE`` on EC2)."""
    if settings.uses_sasl and not secret_arn:
        raise ValueError("auth_mode sasl needs the credentials secret's ARN")
    return pack_bundle(
        write_files(
            settings, secret_arn, drain, ssm_agent_key=ssm_agent_key,
            cloudwatch_agent_fingerprint=cloudwatch_agent_fingerprint, monitoring=monitoring,
            queue_device=queue_device, pins=pins,
        )
    )  # fmt: skip


def cloud_config(
    settings: RelaySettings,
    ssh_public_key: str | None = None,
    drain: bool = False,
    *,
    store: BundleStore,
    pinned: str | None = None,
) -> dict[str, Any]:
    """The user data as a data structure: the host's name, the OS's packages, and the bootstrap
    that installs the bundle the pointer in ``store`` names, then the setup. Nothing a change
    in place touches: ``ssh_public_key`` lets the default user log in (cloud-init installs
    it), and ``drain`` is here because dropping the drain step would drain a serving host,
    so switching it replaces the hosts. ``pinned``: a bundle's SHA-256 written down, so a new
    bundle replaces the host (where no deployment step can apply it in place)."""
    pin = render_template(
        "bundle.env", settings, store=store, pointer=POINTER_KEY, drain=drain, pinned=pinned
    )
    document: dict[str, Any] = {
        # The host's own name, which the transport table keeps local (G2), also in /etc/hosts
        # so dnsmasq and Postfix can resolve it (G14).
        "hostname": settings.short_host_name,
        "fqdn": settings.host_name,
        "prefer_fqdn_over_hostname": False,
        "manage_etc_hosts": True,
        "package_update": True,
        "packages": list(OS_PROFILES[settings.os].packages),
        "write_files": [
            {"path": BUNDLE_ENV_PATH, "content": without_comments(pin), **_CONFIG_FILE},
            _script_file("cmc-relay-bootstrap"),
        ],
        "runcmd": [[BOOTSTRAP], [f"{SCRIPT_DIR}/cmc-relay-setup"]],
    }
    if ssh_public_key is not None:
        document["ssh_authorized_keys"] = [ssh_public_key]
    return document


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the payload reads like the files it writes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def dump_cloud_config(document: dict[str, Any]) -> str:
    """A ``#cloud-config`` document as YAML, keys in the order they were built."""
    return "#cloud-config\n" + yaml.dump(
        document, Dumper=_LiteralDumper, sort_keys=False, width=100
    )


def render_user_data(
    settings: RelaySettings,
    ssh_public_key: str | None = None,
    drain: bool = False,
    *,
    store: BundleStore,
    pinned: str | None = None,
) -> str:
    """The ``#cloud-config`` document given to the instance (see ``pack_user_data``);
    ``store``: where the pointer to the bundle (``render_bundle``) is, for the host to fetch.

    The bundle's own arguments (the SSM Agent key, the CloudWatch agent's fingerprint, the
    monitoring settings, the secret's ARN) are the bundle's: they do not change this."""
    document = cloud_config(settings, ssh_public_key, drain, store=store, pinned=pinned)
    user_data = dump_cloud_config(document)
    pack_user_data(user_data)  # refuse a payload EC2 would refuse, before any resource exists
    return user_data


def pack_user_data(user_data: str) -> str:
    """Gzip and base64 the document for EC2, which takes at most 16 KB before base64.

    cloud-init recognises gzip by its magic bytes; ``mtime=0`` keeps the bytes, and so the
    instance's replace-on-change trigger, stable from one ``pulumi up`` to the next.
    """
    packed = gzip.compress(user_data.encode(), compresslevel=9, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise ValueError(
            f"user data is {len(packed)} bytes gzipped; EC2 accepts at most {USER_DATA_LIMIT}"
        )
    return base64.b64encode(packed).decode()
