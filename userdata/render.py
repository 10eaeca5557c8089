"""Render the relay host's cloud-init payload: pure functions from settings to files.

Every file the host gets goes in the bundle: configuration from ``templates/``, a tree laid
out like the host's file system (``templates/etc/dnsmasq.d/cmc-relay.conf.j2`` becomes
``/etc/dnsmasq.d/cmc-relay.conf``; main.cf and master.cf are the fragments in
``/etc/cmc-relay`` that cmc-relay-setup applies with ``postconf``), the on-host scripts as
they are, and a few generated files; APPLIES says which of them a host of given settings
gets. The bundle is a tar.gz in S3, stored under its SHA-256, which a pointer object names.
The user data, a ``#cloud-config`` document, holds only what the bootstrap needs to find the
pointer and the OS's own settings, so a configuration change leaves it as it was (the host
applies the new bundle in place, ``cmc-relay-apply``) and only a new bootstrap or OS setting
replaces the host. Nothing secret is rendered: the host fetches its credentials by ARN at
boot.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import ipaddress
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import jinja2
import yaml

from cmc_relay.userdata.metrics import DEFAULT_MONITORING, Monitoring
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.settings import REBOOT_STAGGER_MINUTES, RelaySettings

USER_DATA_LIMIT: Final = 16 * 1024  # EC2 refuses user data above 16 KB (before base64)
STAGE_DIR: Final = "/etc/cmc-relay"
SCRIPT_DIR: Final = "/usr/local/sbin"
UNIT_DIR: Final = "/etc/systemd/system"
# Postfix's lookup tables travel here, not into /etc/postfix, which the bundle may not write
# (cmc-relay-bootstrap's ALLOWED_DIRS): cmc-relay-setup installs them there, same names.
POSTFIX_DIR: Final = "/etc/postfix"
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
_templates.globals.update(
    mail_log=MAIL_LOG,
    logrotate_config=LOGROTATE_CONFIG_PATH,
    stagger_minutes=REBOOT_STAGGER_MINUTES,
)


def regexp_literal(domain: str) -> str:
    """A validated domain name as a POSIX regular expression matching exactly it."""
    return domain.replace(".", r"\.")


def regexp_domain(domain: str) -> str:
    """A domain name as a regular expression matching it and its subdomains."""
    return rf"(.+\.)?{regexp_literal(domain)}"


_templates.filters["regexp_literal"] = regexp_literal
_templates.filters["regexp_domain"] = regexp_domain


def render_template(
    path: str, settings: RelaySettings, secret_arn: str | None = None, **extra: object
) -> str:
    """The file at ``path`` on the host (absolute) from its template, ``templates/<path>.j2``."""
    return _templates.get_template(f"{path.lstrip('/')}.j2").render(
        s=settings, os=OS_PROFILES[settings.os], secret_arn=secret_arn, **extra
    )


def template_paths() -> list[str]:
    """Every template's file, by its absolute path on the host: the tree under templates/."""
    return [f"/{name.removesuffix('.j2')}" for name in _templates.list_templates(["j2"])]


def script(name: str) -> str:
    return resources.files("cmc_relay.userdata").joinpath("scripts", name).read_text()


def script_names() -> list[str]:
    """Every on-host script, by its file name in SCRIPT_DIR."""
    scripts = resources.files("cmc_relay.userdata").joinpath("scripts")
    return sorted(entry.name for entry in scripts.iterdir() if entry.is_file())


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


# What the on-host Python scripts share, beside them: a script's own directory comes first on
# its sys.path.
SCRIPT_HELPER: Final = "cmc_relay_host.py"


def _script_file(name: str) -> dict[str, str]:
    """An on-host script, installed as a root-owned command (the shared module, as a module)."""
    return {
        "path": f"{SCRIPT_DIR}/{name}",
        "content": script(name),
        "owner": "root:root",
        "permissions": "0644" if name == SCRIPT_HELPER else "0755",
    }


# Whether a file goes to the host, by its path there (settings, and whether the deployment
# drains the host before deleting it); every other template, script and file always does.
Applies = Callable[[RelaySettings, bool], bool]


def _in_user_data(settings: RelaySettings, drain: bool) -> bool:
    return False  # the bootstrap's own files: cloud_config writes them, not the bundle


def _uses_secrets(settings: RelaySettings, drain: bool) -> bool:
    return settings.uses_sasl or bool(settings.inbound_tls_secret_arn)


def _reboots(settings: RelaySettings, drain: bool) -> bool:
    return settings.reboot_window is not None  # in the maintenance window


APPLIES: Final[dict[str, Applies]] = {
    BUNDLE_ENV_PATH: _in_user_data,
    BOOTSTRAP: _in_user_data,
    f"{POSTFIX_DIR}/cmc-relay-sender-canonical": lambda s, _: bool(s.sender_domain),
    f"{POSTFIX_DIR}/cmc-relay-sender-access": lambda s, _: bool(s.allowed_sender_domains),
    f"{POSTFIX_DIR}/cmc-relay-operator": lambda s, _: bool(s.operator_email),
    f"{POSTFIX_DIR}/cmc-relay-smtp-header-checks": lambda s, _: not s.keep_received_headers,
    AUTO_UPGRADES_PATH: lambda s, _: OS_PROFILES[s.os].unattended_upgrades,
    f"{SCRIPT_DIR}/cmc-relay-reboot": _reboots,
    f"{UNIT_DIR}/cmc-relay-reboot.service": _reboots,
    f"{UNIT_DIR}/cmc-relay-reboot.timer": _reboots,
    # The self-signed certificate, where no certificate comes from Secrets Manager.
    f"{SCRIPT_DIR}/cmc-relay-inbound-cert": (
        lambda s, _: s.inbound_tls != "none" and s.inbound_tls_secret_arn is None
    ),
    f"{SCRIPT_DIR}/cmc-relay-fetch-secret": _uses_secrets,  # the secrets, kept current
    f"{UNIT_DIR}/cmc-relay-fetch-secret.service": _uses_secrets,
    f"{UNIT_DIR}/cmc-relay-fetch-secret.timer": _uses_secrets,
    # The agents the image or the OS's repositories lack, and what their installer trusts.
    SSM_AGENT_KEY_PATH: lambda s, _: "ssm" in OS_PROFILES[s.os].agent_downloads,
    f"{SCRIPT_DIR}/cmc-relay-install-agent": lambda s, _: bool(OS_PROFILES[s.os].agent_downloads),
    AGENT_PINS_PATH: lambda s, _: bool(OS_PROFILES[s.os].agent_downloads),
    f"{SCRIPT_DIR}/cmc-relay-drain": lambda _, drain: drain,
}


def applies(path: str, settings: RelaySettings, drain: bool = False) -> bool:
    """Whether the file at ``path`` on the host goes in the bundle (APPLIES)."""
    return path not in APPLIES or APPLIES[path](settings, drain)


def bundle_path(path: str) -> str:
    """Where the bundle carries the file at ``path`` on the host: there, or for Postfix's
    tables in POSTFIX_STAGE_DIR under the same name."""
    if path.startswith(f"{POSTFIX_DIR}/"):
        return f"{POSTFIX_STAGE_DIR}/{path.removeprefix(f'{POSTFIX_DIR}/')}"
    return path


def postfix_tables(settings: RelaySettings) -> dict[str, str]:
    """The lookup tables main.cf names, by their file name in /etc/postfix: their content."""
    return {
        path.removeprefix(f"{POSTFIX_DIR}/"): render_template(path, settings)
        for path in template_paths()
        if path.startswith(f"{POSTFIX_DIR}/") and applies(path, settings)
    }


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
    return parse_main_cf(render_template(f"{STAGE_DIR}/main.cf", settings))


def postfix_services(settings: RelaySettings) -> dict[str, str]:
    """The master.cf services the host adds with ``postconf -M``: entry by name/type."""
    return parse_main_cf(render_template(f"{STAGE_DIR}/master.cf", settings))


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
    """Every file the bundle gives the host, by path: each template of the tree, each script
    and the generated files, where APPLIES lets them; ``drain`` adds the script a
    deployment runs before deleting the host. Where the image lacks SSM Agent or the OS's
    repositories the CloudWatch agent, the installer and what it trusts: the public key it
    checks SSM Agent against (``ssm_agent_key``, ASCII armored; None: AWS's), and in relay.env
    the fingerprint the CloudWatch agent's signing key must have (AWS's by default); a test
    environment passes its own signing key's, and with ``pins`` its packages' version and
    SHA-256 (JSON as ``agent_pins``; None: the shipped pins). ``monitoring``: where metrics and
    mail log go. ``queue_device``: where the host's queue volume is attached, which Postfix's
    queue must be on before Postfix starts (None: the queue stays on the root disk, as in a
    twin or chroot)."""
    metrics_config = json.dumps(monitoring.publisher_config(), separators=(",", ":"))
    generated = {
        METRICS_CONFIG_PATH: metrics_config + "\n",
        CLOUDWATCH_AGENT_CONFIG_PATH: json.dumps(
            cloudwatch_agent_config(monitoring), separators=(",", ":")
        ),
        SSM_AGENT_KEY_PATH: aws_ssm_agent_key() if ssm_agent_key is None else ssm_agent_key,
        AGENT_PINS_PATH: agent_pins() if pins is None else pins,
    }
    extra = {
        "cloudwatch_agent_fingerprint": cloudwatch_agent_fingerprint,
        "queue_device": queue_device,
    }
    files = [
        {
            "path": bundle_path(path),
            "content": without_comments(render_template(path, settings, secret_arn, **extra)),
            **_CONFIG_FILE,
        }
        for path in template_paths()
        if applies(path, settings, drain)
    ]
    files += [
        _script_file(name)
        for name in script_names()
        if applies(f"{SCRIPT_DIR}/{name}", settings, drain)
    ]
    files += [
        {"path": path, "content": content, **_CONFIG_FILE}
        for path, content in generated.items()
        if applies(path, settings, drain)
    ]
    return sorted(files, key=lambda entry: entry["path"])


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
        BUNDLE_ENV_PATH, settings, store=store, pointer=POINTER_KEY, drain=drain, pinned=pinned
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
