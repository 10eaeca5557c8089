"""The component's typed arguments and their validation: pure, tested directly.

No ``from __future__ import annotations`` here: Pulumi's schema analyzer (the component used
from other languages, ``components/provider.py``) reads these annotations as live types.
"""

import inspect
import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Required, TypedDict

import pulumi

from cmc_relay.components.arguments import ARGUMENTS, CONFIG_KEYS, COUNTED_LISTS, KNOWN_WHEN_RUN
from cmc_relay.components.image import AMI_ID, check_image_refresh
from cmc_relay.userdata.metrics import DEFAULT_NAMESPACE
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.settings import (
    DEFAULT_OS,
    DEFAULT_SMTP_PORT,
    EGRESS_MODES,
    PRO_MAX_SESSIONS_LIMIT,
    SETTING_CHECKS,
    VERIFICATION_MODES,
    ConfigError,
    Egress,
    OsName,
    RelaySettings,
    Verification,
    check_session_budget,
    parse_allowed_cidrs,
    parse_cidrs,
    parse_email,
    require_bool,
    require_choice,
    require_int,
    secret_region,
)

DEFAULT_INSTANCE_TYPE: Final = "t3.small"
# A valid network standing in for allowed_cidrs known only at deployment, for the checks of
# the settings that are known before.
_STAND_IN_CIDRS: Final = ("192.0.2.0/24",)
# Hosts are replaced one after the other, each verified before the next: minutes per host.
MAX_REPLICAS: Final = 10
DEFAULT_DRAIN_TIMEOUT: Final = 600
DRAIN_TIMEOUT_RANGE: Final = (30, 7200)
# The queue volume: an outage of the service queues mail there (gp3 takes 1 GiB to 16 TiB).
DEFAULT_QUEUE_VOLUME_GB: Final = 10
QUEUE_VOLUME_GB_RANGE: Final = (1, 1024)

# What CloudWatch accepts as a namespace (ASCII letters, digits, ". - _ / # :" and spaces).
_NAMESPACE = re.compile(r"^[0-9A-Za-z.\-_/#: ]{1,255}$")
# The retention periods CloudWatch Logs accepts, in days.
LOG_RETENTION_DAYS: Final = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
)  # fmt: skip
DEFAULT_LOG_RETENTION_DAYS: Final = 30
_ARN = re.compile(r"^arn:[a-z-]+:(?P<service>[a-z0-9-]*):")
_SNS_TOPIC_ARN = re.compile(
    r"^arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-\d:\d{12}:[A-Za-z0-9_-]{1,256}$"
)
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z]{2}(-[a-z]+)+-\d:\d{12}:key/[0-9a-f-]{36}$")
_HOSTED_ZONE_ID = re.compile(r"^Z[A-Z0-9]{1,31}$")
DNS_ZONE_PRIVATE: Final = "private"
DNS_ZONE_NONE: Final = "none"
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# Graviton families (t4g, m7g, c7gn, ...) run arm64 images.
_ARM_INSTANCE_TYPE = re.compile(r"^[a-z]+\d+g[a-z]*\.")
_SSH_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)"
    r"|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( [^\n]*)?$"
)


class RelayHostArgs(TypedDict, total=False):
    """Arguments of :class:`cmc_relay.RelayHost`; defaults as in the README's config table.

    Every argument takes a ``pulumi.Input`` (a value, or an Output of another resource or a
    StackReference, secret or not) except these plain ones, which decide which resources
    exist, or name them, when the program runs: ``plan``, ``auth_mode``, ``os``,
    ``instance_type`` and ``image_refresh`` (the image pin's name), ``verification``,
    ``egress``, ``replicas``, ``drain_on_delete``, ``alarms``; and ``reboot_window`` (the hosts'
    tags). ``allowed_cidrs``, ``allowed_security_group_ids``,
    ``ssh_allowed_cidrs`` and ``subnet_ids`` are plain lists
    (one rule or host per element) whose elements may be Outputs. Values known only at
    deployment are checked then, with the messages literals get before any resource.
    ``components/arguments.py`` declares the rest of each argument: see there to add one.
    """

    vpc_id: Required[pulumi.Input[str]]
    """VPC of the subnet; the security group is created in it."""
    subnet_id: Required[pulumi.Input[str]]
    """Subnet for the instance: public (routed to an internet gateway) for the Elastic IP."""
    allowed_cidrs: Required[Sequence[pulumi.Input[str]]]
    """Client networks allowed to relay through the host (never 0.0.0.0/0)."""
    allowed_security_group_ids: Sequence[pulumi.Input[str]]
    """Security groups whose members may also connect to port 25."""
    plan: str
    """trial (default), standard or pro: chooses the SMTP host (G4)."""
    subdomain: pulumi.Input[str]
    """Pro plan only, required there: SUBDOMAIN of SUBDOMAIN.smtps.jp."""
    smtp_host: pulumi.Input[str]
    """Overrides the plan's SMTP host."""
    smtp_port: pulumi.Input[int]
    """Port of the service's relay endpoint (default 10025)."""
    auth_mode: str
    """sasl (default, SMTP AUTH with the API user) or ip (Pro IP address authentication)."""
    credentials_secret_arn: pulumi.Input[str]
    """sasl: an existing secret whose value is {"username": ..., "password": ...}."""
    api_user: pulumi.Input[str]
    """sasl: API user, with api_key: the component creates the secret itself."""
    api_key: pulumi.Input[str]
    """sasl: API key (pass it as a Pulumi secret)."""
    kms_key_arn: pulumi.Input[str]
    """Customer-managed KMS key that encrypts the secret, if any."""
    os: str
    """debian-13 (default), debian-12, al2023 or ubuntu-24.04."""
    instance_type: str
    """EC2 instance type (default t3.small); Graviton types get arm64 images."""
    ami_id: pulumi.Input[str]
    """The image, chosen by the user; by default the newest official image of ``os`` when the
    hosts are first created, kept until ``os``, the architecture or ``image_refresh`` changes."""
    image_refresh: str
    """Any token, such as a date: setting or changing it moves the hosts to the newest
    official image of ``os`` (they are replaced, one at a time)."""
    max_connections: pulumi.Input[int]
    """Sessions to the service per sending IP (default 10; 1-10, up to 100 on pro) (G9)."""
    tls_level: pulumi.Input[str]
    """TLS to the service (G11): secure (default: the certificate verified for the service's
    name, TLS 1.2 or newer), or with auth_mode ip only encrypt (unverified) or may (TLS if
    offered, else plain text), both weaker: see the README's security model."""
    message_size_limit: pulumi.Input[int]
    """Largest message accepted, in bytes (default 10240000): the service's size limit."""
    host_name: pulumi.Input[str]
    """Fully qualified host name of the relay (default cmc-relay.internal) (G2); the name
    applications send to (see ``dns_zone``)."""
    dns_zone: pulumi.Input[str]
    """Where ``host_name`` is published: ``private`` (default: a Route 53 private hosted zone
    for it, associated with the VPC), the id of an existing hosted zone (a record in it), or
    ``none`` (no record; smtp_endpoint is then an address)."""
    secret_refresh_minutes: pulumi.Input[int]
    """How often the host re-reads the secret to pick up rotation (default 5)."""
    tags: pulumi.Input[Mapping[str, pulumi.Input[str]]]
    """Tags added to every resource that takes tags."""
    verification: str
    """Post-boot check that gates the deployment: ssm (default), ssh or none."""
    ssh_public_key: pulumi.Input[str]
    """ssh verification: OpenSSH public key authorized for the OS's default user."""
    ssh_private_key: pulumi.Input[str]
    """ssh verification: the private key of that public key (pass it as a Pulumi secret)."""
    ssh_allowed_cidrs: Sequence[pulumi.Input[str]]
    """ssh verification, required there: networks allowed to port 22 (never 0.0.0.0/0)."""
    ephemeral: pulumi.Input[bool]
    """For throwaway stacks: the created secret is deleted at once, not after 30 days."""
    replicas: int
    """Number of relay hosts (default 1, at most 10); more than one sit behind a balancer."""
    subnet_ids: Sequence[pulumi.Input[str]]
    """With replicas > 1: one subnet per host, in order, starting with subnet_id (one per AZ)."""
    egress: str
    """eip (default: public subnets, an Elastic IP per host) or nat (private subnets)."""
    nat_gateway_ips: pulumi.Input[Sequence[pulumi.Input[str]]]
    """egress nat: the NAT gateways' public IPs, one for all hosts or one per host in order."""
    pro_max_sessions: pulumi.Input[int]
    """Pro only: the console's max sessions (default 100), which all hosts together share."""
    drain_on_delete: bool
    """Drain each host's queue before deleting it (default: true with replicas > 1)."""
    drain_timeout_seconds: pulumi.Input[int]
    """drain_on_delete: how long a drain waits for the queue to empty (default 600)."""
    queue_volume_gb: pulumi.Input[int]
    """Size in GiB of each host's queue volume, the EBS volume holding the Postfix queue that
    moves to a replacement host (default 10, 1-1024; a change resizes it in place)."""
    discard_queue_on_destroy: pulumi.Input[bool]
    """Let pulumi destroy (or a scale-in) delete a host whose queue still holds mail (default
    false: the deletion stops, naming how many messages are queued)."""
    sender_domain: pulumi.Input[str]
    """Senders without a real domain (root@localhost, *.compute.internal, ...) become
    local-part@sender_domain, in the envelope and the From:/Sender: headers."""
    rewrite_domains: pulumi.Input[Sequence[pulumi.Input[str]]]
    """With sender_domain: more domains (and their subdomains) to rewrite to it."""
    allowed_sender_domains: pulumi.Input[Sequence[pulumi.Input[str]]]
    """When set, MAIL FROM outside these domains (after rewriting) is refused with 5.7.1."""
    operator_email: pulumi.Input[str]
    """Mail for the relay's own root, postmaster and other local users goes here (needs
    sender_domain); without it, it stays in a mailbox on the host."""
    inbound_tls: pulumi.Input[str]
    """STARTTLS offered to the applications: may (default), encrypt (required) or none."""
    keep_received_headers: pulumi.Input[bool]
    """Pass the Received: headers on to the service (default false: they name internal hosts
    and addresses, so the relay removes them on the way out)."""
    inbound_tls_secret_arn: pulumi.Input[str]
    """A secret holding the PEM key and certificate chain to offer; by default the host
    generates a self-signed certificate at first boot."""
    reboot_window: str
    """Maintenance window for reboots that installed updates require, "DAYS HH:MM" on the
    hosts' clock (UTC), e.g. "Sun 03:00"; host i reboots i x 30 minutes into it. Default:
    never reboot automatically (the RebootRequired alarm tells)."""
    client_message_rate_limit: pulumi.Input[int]
    """Messages one client address may send per minute (default 1000; 0: no limit); over it,
    450 (try later). Loopback is exempt."""
    client_recipient_rate_limit: pulumi.Input[int]
    """Recipients one client address may send to per minute (default 5000; 0: no limit)."""
    client_connection_limit: pulumi.Input[int]
    """Connections one client address may hold at once (default 20, at most 100; 0: no
    limit); over it, 421."""
    metrics_namespace: pulumi.Input[str]
    """CloudWatch namespace of the hosts' metrics (default CMCRelay; not AWS/...)."""
    log_retention_days: pulumi.Input[int]
    """Days CloudWatch Logs keeps the mail log (default 30; a value CloudWatch Logs accepts)."""
    log_kms_key_arn: pulumi.Input[str]
    """Customer-managed KMS key that encrypts the mail log group, if any."""
    alarms: bool
    """Alarms on the hosts' metrics and the balancer (default true); false: only the hosts'
    recovery alarms, and no topic."""
    alarm_topic_arn: pulumi.Input[str]
    """SNS topic the alarms notify; without it and alarm_email they notify nobody."""
    alarm_email: pulumi.Input[str]
    """Instead of alarm_topic_arn: the component creates a topic with this e-mail subscribed."""
    alarm_deferred_threshold: pulumi.Input[int]
    """Alarm when a host's deferred queue holds more messages for 10 minutes (default 100)."""
    alarm_oldest_message_minutes: pulumi.Input[int]
    """Alarm when a host's oldest queued message is older, in minutes (default 30)."""
    alarm_bounced_threshold: pulumi.Input[int]
    """Alarm when a host bounces this many messages in 5 minutes (default 1)."""
    alarm_refused_threshold: pulumi.Input[int]
    """Alarm when the service refuses this many of a host's sessions in 5 minutes (default 5)."""
    alarm_queue_free_percent: pulumi.Input[int]
    """Alarm when less of the queue's file system than this is free for 5 minutes, in percent
    (default 20; 1-99)."""
    alarm_reboot_required_days: pulumi.Input[int]
    """Alarm when installed updates have waited this many days for a reboot (default 3; 1-7)."""
    alarm_sent_threshold: pulumi.Input[int]
    """Alarm when a host sends more than this many messages in 5 minutes (default 5000)."""


_SETTINGS_FIELDS: Final = tuple(f.name for f in fields(RelaySettings) if f.init)
_KNOWN_ARGS: Final = frozenset(RelayHostArgs.__annotations__)
# Pulumi's wire format has only doubles: from another language, smtp_port arrives as 2525.0.
_INT_ARGS: Final = frozenset(a.name for a in ARGUMENTS if a.kind == "integer")
# Secrets are checked for presence only: their values never enter the validation's Output,
# which would make every value derived from it secret.
SECRET_ARGS: Final = frozenset(a.name for a in ARGUMENTS if a.secret)
_SSH_ARGS: Final = ("ssh_public_key", "ssh_private_key", "ssh_allowed_cidrs")


@dataclass(frozen=True)
class AlarmThresholds:
    """When the alarms fire; the README's "Alarms and dashboard" lists the defaults."""

    deferred_messages: int = 100
    oldest_message_minutes: int = 30
    bounced: int = 1
    refused: int = 5
    queue_free_percent: int = 20
    reboot_required_days: int = 3
    # One client at clientMessageRateLimit's default for the whole 5 minutes.
    sent: int = 5000


# Argument -> (AlarmThresholds field, lowest value, highest value): a count of 0 would always
# be reached; a share is a percentage; CloudWatch evaluates at most 7 days of hourly periods.
_THRESHOLD_MAX: Final = 1_000_000
_THRESHOLD_ARGS: Final = {
    "alarm_deferred_threshold": ("deferred_messages", 0, _THRESHOLD_MAX),
    "alarm_oldest_message_minutes": ("oldest_message_minutes", 1, _THRESHOLD_MAX),
    "alarm_bounced_threshold": ("bounced", 1, _THRESHOLD_MAX),
    "alarm_refused_threshold": ("refused", 1, _THRESHOLD_MAX),
    "alarm_queue_free_percent": ("queue_free_percent", 1, 99),
    "alarm_reboot_required_days": ("reboot_required_days", 1, 7),
    "alarm_sent_threshold": ("sent", 1, _THRESHOLD_MAX),
}
_ALARM_ARGS: Final = ("alarm_topic_arn", "alarm_email", *_THRESHOLD_ARGS)


@dataclass(frozen=True)
class MonitoringOptions:
    """The validated metrics, mail log and alarm arguments (see ``HostOptions``: from
    ``check_args``, ``namespace`` may be an unchecked Output, and ``thresholds`` None while one
    of them is)."""

    namespace: pulumi.Input[str] = DEFAULT_NAMESPACE
    log_retention_days: pulumi.Input[int] = DEFAULT_LOG_RETENTION_DAYS
    log_kms_key_arn: pulumi.Input[str] | None = None
    alarms: bool = True
    alarm_topic_arn: pulumi.Input[str] | None = None
    alarm_email: pulumi.Input[str] | None = None
    thresholds: AlarmThresholds | None = field(default_factory=AlarmThresholds)


@dataclass(frozen=True)
class HostOptions:
    """The validated arguments that shape AWS resources rather than files on the host.

    From ``check_args`` before the values are known, a field typed ``pulumi.Input`` may hold
    an unchecked Output; from ``validate_args`` every field is a checked plain value. The
    settings the resources need before (``os``, ``replicas``, ...) are plain either way.
    """

    os: OsName = DEFAULT_OS
    smtp_port: pulumi.Input[int] = DEFAULT_SMTP_PORT
    uses_sasl: bool = True
    allowed_cidrs: tuple[pulumi.Input[str], ...] = ()
    inbound_tls_secret_arn: pulumi.Input[str] | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    ami_id: pulumi.Input[str] | None = None
    kms_key_arn: pulumi.Input[str] | None = None
    api_user: pulumi.Input[str] | None = None
    tags: pulumi.Input[Mapping[str, pulumi.Input[str]]] = field(default_factory=dict)
    image_refresh: str | None = None
    dns_zone: pulumi.Input[str] = DNS_ZONE_PRIVATE
    verification: Verification = "ssm"
    ssh_public_key: pulumi.Input[str] | None = None
    ssh_allowed_cidrs: tuple[pulumi.Input[str], ...] = ()
    ephemeral: pulumi.Input[bool] = False
    replicas: int = 1
    egress: Egress = "eip"
    nat_gateway_ips: pulumi.Input[Sequence[pulumi.Input[str]]] = ()
    drain_on_delete: bool = False
    drain_timeout_seconds: pulumi.Input[int] = DEFAULT_DRAIN_TIMEOUT
    queue_volume_gb: pulumi.Input[int] = DEFAULT_QUEUE_VOLUME_GB
    discard_queue_on_destroy: pulumi.Input[bool] = False
    monitoring: MonitoringOptions = field(default_factory=MonitoringOptions)

    @property
    def architecture(self) -> str:
        """The image architecture of the instance type (checked by ``validate_args``)."""
        assert isinstance(self.instance_type, str)
        return "arm64" if _ARM_INSTANCE_TYPE.match(self.instance_type) else "x86_64"


def known(value: object) -> bool:
    """A plain value through and through: no Output or awaitable, nor one in a list or map."""
    if isinstance(value, pulumi.Output) or inspect.isawaitable(value):
        return False
    if isinstance(value, list | tuple):
        return all(known(item) for item in value)
    if isinstance(value, Mapping):
        return all(known(item) for item in value.values())
    return True


def validate_args(args: Mapping[str, Any]) -> tuple[RelaySettings, HostOptions]:
    """Refuse every invalid argument, naming it; every value must be known (see check_args)."""
    settings, options = check_args(args)
    if settings is None:
        pending = sorted(name for name, value in args.items() if not known(value))
        raise ValueError(f"values known only at deployment: {', '.join(pending)}")
    return settings, options


def check_args(args: Mapping[str, Any]) -> tuple[RelaySettings | None, HostOptions]:
    """Refuse every invalid argument, naming it, before any resource is created.

    A value known only at deployment (an Output) is passed through to the options unchecked,
    and the settings are None when one of theirs is such a value: the component checks them
    all together once they are known (``validate_args`` in an ``apply``), with the same
    messages. Every known value is checked here on its own, and with the others that are known.
    """
    unknown = sorted(set(args) - _KNOWN_ARGS)
    if unknown:
        raise ConfigError(
            unknown[0],
            f"unknown argument; known: {', '.join(sorted(_KNOWN_ARGS))}",
            has_config_key=False,
        )
    for required in ("vpc_id", "subnet_id", "allowed_cidrs"):
        if args.get(required) is None:
            raise ConfigError(required, "is required", has_config_key=required in CONFIG_KEYS)
    require_plain_shapes(args)
    args = {k: whole_number(v) if k in _INT_ARGS else v for k, v in args.items()}
    settings = relay_settings(args)
    plan, uses_sasl = args.get("plan", "trial"), args.get("auth_mode", "sasl") == "sasl"

    secret_arn = args.get("credentials_secret_arn")
    api_user, api_key = args.get("api_user"), args.get("api_key")
    if uses_sasl:
        if secret_arn is None and (api_user is None or api_key is None):
            raise ConfigError(
                "credentials_secret_arn",
                "auth_mode sasl needs credentials: credentials_secret_arn, "
                "or api_user together with api_key",
            )
        if secret_arn is not None and (api_user is not None or api_key is not None):
            raise ConfigError(
                "credentials_secret_arn", "give either credentials_secret_arn or api_user/api_key"
            )
        if (
            known(api_user)
            and api_user is not None
            and (
                not isinstance(api_user, str)
                or not api_user
                or ":" in api_user
                or api_user != api_user.strip()
            )
        ):
            raise ConfigError("api_user", f"{api_user!r} is not a valid API user name")
    elif any(value is not None for value in (secret_arn, api_user, api_key)):
        raise ConfigError(
            "auth_mode", "is ip: SMTP AUTH credentials are not used; remove them or use sasl"
        )
    if known(secret_arn) and secret_arn is not None:
        secret_region(secret_arn)

    instance_type = args.get("instance_type", DEFAULT_INSTANCE_TYPE)
    if known(instance_type) and (
        not isinstance(instance_type, str) or not _INSTANCE_TYPE.match(instance_type)
    ):
        raise ConfigError("instance_type", f"{instance_type!r} is not an EC2 instance type")
    ami_id = args.get("ami_id")
    if known(ami_id) and ami_id is not None and not AMI_ID.match(str(ami_id)):
        raise ConfigError("ami_id", f"{ami_id!r} is not an AMI id (ami-...)")
    image_refresh = args.get("image_refresh")
    if image_refresh is not None:
        check_image_refresh(image_refresh)
    dns_zone = args.get("dns_zone", DNS_ZONE_PRIVATE)
    if isinstance(dns_zone, str):
        checked_dns_zone(dns_zone)  # an Output is checked when its value is known
    kms_key_arn = args.get("kms_key_arn")
    if known(kms_key_arn) and kms_key_arn is not None and not _KMS_KEY_ARN.match(str(kms_key_arn)):
        raise ConfigError("kms_key_arn", f"{kms_key_arn!r} is not a KMS key ARN")
    if kms_key_arn is not None and not uses_sasl:
        raise ConfigError("kms_key_arn", "only applies to auth_mode sasl (it encrypts the secret)")
    ephemeral = args.get("ephemeral", False)
    if known(ephemeral):
        require_bool("ephemeral", ephemeral)
    smtp_port = args.get("smtp_port", DEFAULT_SMTP_PORT)
    if known(smtp_port):
        checked_service_port(smtp_port, args.get("os", DEFAULT_OS))
    verification, ssh_public_key, ssh_allowed_cidrs = verification_options(args)
    replicas, egress, nat_gateway_ips = fleet_options(args, settings, plan)
    drain_on_delete, drain_timeout_seconds = drain_options(args, replicas)
    queue_volume_gb, discard_queue_on_destroy = queue_options(args)
    options = HostOptions(
        os=args.get("os", DEFAULT_OS),
        smtp_port=smtp_port,
        uses_sasl=uses_sasl,
        allowed_cidrs=allowed_networks(args["allowed_cidrs"], settings),
        inbound_tls_secret_arn=args.get("inbound_tls_secret_arn"),
        instance_type=instance_type,
        ami_id=ami_id,
        image_refresh=image_refresh,
        dns_zone=dns_zone,
        kms_key_arn=kms_key_arn,
        api_user=api_user,
        tags=args.get("tags") or {},
        verification=verification,
        ssh_public_key=ssh_public_key,
        ssh_allowed_cidrs=ssh_allowed_cidrs,
        ephemeral=ephemeral,
        replicas=replicas,
        egress=egress,
        nat_gateway_ips=nat_gateway_ips,
        drain_on_delete=drain_on_delete,
        drain_timeout_seconds=drain_timeout_seconds,
        queue_volume_gb=queue_volume_gb,
        discard_queue_on_destroy=discard_queue_on_destroy,
        monitoring=monitoring_options(args),
    )
    return settings, options


def allowed_networks(
    given: Sequence[pulumi.Input[str]], settings: RelaySettings | None
) -> tuple[pulumi.Input[str], ...]:
    """The client networks, one security group rule each: normalised and deduplicated when
    known, else as given (their count must hold once they are known)."""
    if settings is not None:
        return settings.allowed_cidrs
    return parse_allowed_cidrs(given) if known(given) else tuple(given)


def require_plain_shapes(args: Mapping[str, Any]) -> None:
    """Arguments that decide which resources exist must be known when the program runs; so
    must the length of a list that counts resources (its elements may be Outputs)."""
    for name, why in KNOWN_WHEN_RUN.items():
        if name in args and not known(args[name]):
            raise ConfigError(
                name, f"must be a plain value known when the program runs, not an Output: {why}"
            )
    for name, why in COUNTED_LISTS.items():
        if isinstance(args.get(name), pulumi.Output) or inspect.isawaitable(args.get(name)):
            raise ConfigError(
                name,
                "must be a list known when the program runs (its elements may be Outputs), "
                f"not an Output of a list: {why}",
            )


def relay_settings(args: Mapping[str, Any]) -> RelaySettings | None:
    """The host's settings once every one of them is known; until then None, after the checks
    that known values allow: the plain ones together (a stand-in for the other required ones),
    each other known value on its own. RelaySettings checks them all once all are known."""
    given = {k: args[k] for k in _SETTINGS_FIELDS if args.get(k) is not None}
    if known(given):
        return RelaySettings(**given)
    plain = {k: v for k, v in given.items() if k in KNOWN_WHEN_RUN}
    if "subdomain" in given:
        plain["subdomain"] = given["subdomain"] if known(given["subdomain"]) else "stand-in"
    RelaySettings(allowed_cidrs=_STAND_IN_CIDRS, **plain)
    plan = given.get("plan", "trial")
    for name, value in given.items():
        if name in plain or name not in SETTING_CHECKS:
            continue
        if known(value):
            SETTING_CHECKS[name](value, plan)
        elif isinstance(value, list | tuple):  # the known elements of a list of Outputs
            for item in filter(known, value):
                SETTING_CHECKS[name]([item], plan)
    return None


def monitoring_options(args: Mapping[str, Any]) -> MonitoringOptions:
    """Where the metrics and the mail log go, and which alarms notify whom."""
    namespace = args.get("metrics_namespace", DEFAULT_NAMESPACE)
    if known(namespace):
        checked_namespace(namespace)
    retention = args.get("log_retention_days", DEFAULT_LOG_RETENTION_DAYS)
    if known(retention) and (isinstance(retention, bool) or retention not in LOG_RETENTION_DAYS):
        raise ConfigError(
            "log_retention_days",
            f"got {retention!r}; CloudWatch Logs accepts {', '.join(map(str, LOG_RETENTION_DAYS))}",
        )
    log_kms_key_arn = args.get("log_kms_key_arn")
    if (
        known(log_kms_key_arn)
        and log_kms_key_arn is not None
        and not _KMS_KEY_ARN.match(str(log_kms_key_arn))
    ):
        raise ConfigError("log_kms_key_arn", f"{log_kms_key_arn!r} is not a KMS key ARN")
    alarms = args.get("alarms", True)
    require_bool("alarms", alarms)
    if not alarms:
        given = [name for name in _ALARM_ARGS if args.get(name) is not None]
        if given:
            raise ConfigError(given[0], "has no effect with alarms false; remove it")
    topic_arn, email = args.get("alarm_topic_arn"), args.get("alarm_email")
    if topic_arn is not None and email is not None:
        raise ConfigError(
            "alarm_email", "give either alarm_topic_arn or alarm_email (a topic is created for it)"
        )
    if known(topic_arn) and topic_arn is not None:
        checked_topic_arn(topic_arn)
    set_thresholds = {name: args[name] for name in _THRESHOLD_ARGS if args.get(name) is not None}
    checked = {
        field_name: require_int(name, set_thresholds[name], low, high)
        for name, (field_name, low, high) in _THRESHOLD_ARGS.items()
        if name in set_thresholds and known(set_thresholds[name])
    }
    thresholds = AlarmThresholds(**checked) if len(checked) == len(set_thresholds) else None
    return MonitoringOptions(
        namespace=namespace,
        log_retention_days=retention,
        log_kms_key_arn=log_kms_key_arn,
        alarms=alarms,
        alarm_topic_arn=topic_arn,
        alarm_email=parse_email("alarm_email", email) if known(email) and email else email,
        thresholds=thresholds,
    )


def checked_service_port(port: int, os: OsName) -> None:
    """The service's port has an outbound rule of its own: not one the host opens anyway."""
    opened = OS_PROFILES[os].package_ports
    if port in opened:
        raise ConfigError(
            "smtp_port",
            f"{port} is open already, for HTTPS APIs and package mirrors "
            f"({', '.join(map(str, opened))}); give the service's SMTP relay port",
        )


def checked_namespace(namespace: object) -> str:
    """A CloudWatch namespace of the user's (AWS/ is AWS's own)."""
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace) or not namespace.strip():
        raise ConfigError(
            "metrics_namespace",
            f"{namespace!r} is not a CloudWatch namespace (up to 255 of A-Z a-z 0-9 . - _ / # :)",
        )
    if namespace.startswith("AWS/"):
        raise ConfigError("metrics_namespace", f"{namespace!r}: AWS/ is reserved for AWS services")
    return namespace


def checked_topic_arn(arn: object) -> str:
    """An SNS topic's ARN, refused with the service it does name when it is another's."""
    if isinstance(arn, str) and _SNS_TOPIC_ARN.match(arn):
        return arn
    other = _ARN.match(arn) if isinstance(arn, str) else None
    what = f"an ARN of {other['service']}, not of SNS" if other else "not an ARN"
    raise ConfigError(
        "alarm_topic_arn",
        f"{arn!r} is {what}; give an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)",
    )


def checked_dns_zone(zone: str) -> str:
    """``private``, ``none`` or a Route 53 hosted zone id (Z...)."""
    if zone in (DNS_ZONE_PRIVATE, DNS_ZONE_NONE) or _HOSTED_ZONE_ID.match(zone):
        return zone
    raise ConfigError(
        "dns_zone",
        f"{zone!r}: give private (a private hosted zone for host_name), the id of a Route 53 "
        "hosted zone (Z0123456789ABCDEFGHIJ) or none",
    )


def checked_record_name(host_name: str, zone_name: str) -> str:
    """host_name, once known to be inside the given zone's domain (Route 53 refuses a record
    outside its zone)."""
    domain = zone_name.rstrip(".").lower()
    if host_name == domain or host_name.endswith(f".{domain}"):
        return host_name
    raise ConfigError(
        "dns_zone",
        f"the hosted zone is for {domain}; host_name {host_name} is not in it: set host_name "
        f"to a name in {domain} (such as cmc-relay.{domain}) or give another zone",
    )


def verification_options(
    args: Mapping[str, Any],
) -> tuple[Verification, pulumi.Input[str] | None, tuple[pulumi.Input[str], ...]]:
    """The verification mode and, for ssh (only), its public key and allowed networks."""
    verification: Verification = args.get("verification", "ssm")
    require_choice("verification", verification, VERIFICATION_MODES)
    if verification != "ssh":
        given = [name for name in _SSH_ARGS if args.get(name) is not None]
        if given:
            raise ConfigError(given[0], f"only applies to verification ssh; it is {verification}")
        return verification, None, ()
    for name in _SSH_ARGS:
        if args.get(name) is None:
            raise ConfigError(name, "is required with verification ssh")
    public_key = args["ssh_public_key"]
    if known(public_key):
        if not isinstance(public_key, str) or not _SSH_PUBLIC_KEY.match(public_key.strip()):
            raise ConfigError(
                "ssh_public_key",
                "must be one OpenSSH public key line (ssh-ed25519 AAAA... comment)",
            )
        public_key = public_key.strip()
    given = args["ssh_allowed_cidrs"]
    for cidrs in [given] if known(given) else [[item] for item in given if known(item)]:
        checked = parse_cidrs(
            "ssh_allowed_cidrs",
            cidrs,
            "would open SSH to the whole internet; list the networks you deploy from instead",
        )
    return verification, public_key, checked if known(given) else tuple(given)


def fleet_options(
    args: Mapping[str, Any], settings: RelaySettings | None, plan: str
) -> tuple[int, Egress, pulumi.Input[Sequence[pulumi.Input[str]]]]:
    """How many hosts, where they are and what they send from, within the session budget."""
    replicas = require_int("replicas", args.get("replicas", 1), 1, MAX_REPLICAS)
    subnet_ids = list(args.get("subnet_ids") or ())
    if replicas > 1 or subnet_ids:
        if all(isinstance(subnet, str) for subnet in (args["subnet_id"], *subnet_ids)):
            checked_subnet_ids(args["subnet_id"], subnet_ids, replicas)
        else:  # ids known only at deployment are checked then (see the component)
            require_subnet_count(len(subnet_ids), replicas)
    egress: Egress = args.get("egress", "eip")
    require_choice("egress", egress, EGRESS_MODES)
    nat_gateway_ips = args.get("nat_gateway_ips")
    if egress == "eip" and nat_gateway_ips is not None:
        raise ConfigError("nat_gateway_ips", "only applies to egress nat; it is eip")
    if egress == "nat" and not nat_gateway_ips:
        raise ConfigError(
            "nat_gateway_ips",
            "is required with egress nat: the NAT gateways' public addresses, "
            "which the service sees as the sending IPs",
        )
    pro_max_sessions = args.get("pro_max_sessions")
    if pro_max_sessions is not None:
        if plan != "pro":
            raise ConfigError("pro_max_sessions", f"only applies to plan pro; it is {plan}")
        if known(pro_max_sessions):
            require_int("pro_max_sessions", pro_max_sessions, 1, PRO_MAX_SESSIONS_LIMIT)
    if not known(nat_gateway_ips):
        if isinstance(nat_gateway_ips, list | tuple):
            parse_addresses("nat_gateway_ips", [ip for ip in nat_gateway_ips if known(ip)])
        return replicas, egress, nat_gateway_ips or ()
    addresses = parse_addresses("nat_gateway_ips", nat_gateway_ips or ())
    if settings is not None and known(pro_max_sessions):
        budget = pro_max_sessions or PRO_MAX_SESSIONS_LIMIT
        check_session_budget(settings, replicas, addresses, budget)
    return replicas, egress, addresses


def require_subnet_count(count: int, replicas: int) -> None:
    if replicas > 1 and count == 0:
        raise ConfigError(
            "subnet_ids", f"is required with replicas {replicas}: one subnet per host"
        )
    if count < replicas:
        raise ConfigError(
            "subnet_ids",
            f"has {count} subnets for replicas {replicas}: each host needs a subnet of its own",
        )


def checked_subnet_ids(subnet_id: str, subnet_ids: Sequence[str], replicas: int) -> list[str]:
    """subnet_ids as given, once known to hold the hosts: host i goes to the i-th subnet."""
    require_subnet_count(len(subnet_ids), replicas)
    repeated = sorted(subnet for subnet, count in Counter(subnet_ids).items() if count > 1)
    if repeated:
        raise ConfigError("subnet_ids", f"lists {repeated[0]} more than once: one host per subnet")
    if subnet_ids[0] != subnet_id:
        raise ConfigError(
            "subnet_ids",
            f"must start with subnet_id {subnet_id}, the first host's subnet; "
            f"it starts with {subnet_ids[0]}",
        )
    return list(subnet_ids)


def check_subnet_placement(subnets: Sequence[tuple[str, str, str]]) -> None:
    """The hosts' subnets as (id, VPC, Availability Zone): one VPC, and one subnet per zone,
    as the balancer takes no more (and two hosts in one zone fail together)."""
    first, vpc, _ = subnets[0]
    seen: dict[str, str] = {}
    for subnet, subnet_vpc, zone in subnets:
        if subnet_vpc != vpc:
            raise ConfigError(
                "subnet_ids", f"{subnet} is in {subnet_vpc}, not in {vpc} with {first}"
            )
        if zone in seen:
            raise ConfigError(
                "subnet_ids",
                f"{seen[zone]} and {subnet} are both in {zone}: one subnet per Availability Zone",
            )
        seen[zone] = subnet


def parse_addresses(name: str, values: object) -> tuple[str, ...]:
    """Single IPv4 addresses, as the service's console takes them (no CIDR, no names)."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise ConfigError(name, f"must be a list of IPv4 addresses; got {values!r}")
    addresses = []
    for value in values:
        try:
            addresses.append(str(ipaddress.IPv4Address(str(value))))
        except ipaddress.AddressValueError:
            raise ConfigError(name, f"{value!r} is not an IPv4 address") from None
    return tuple(addresses)


def drain_options(args: Mapping[str, Any], replicas: int) -> tuple[bool, pulumi.Input[int]]:
    """Whether hosts drain before deletion, and for how long at most."""
    drain_on_delete = args.get("drain_on_delete", replicas > 1)
    require_bool("drain_on_delete", drain_on_delete)
    timeout = args.get("drain_timeout_seconds")
    if timeout is None:
        return drain_on_delete, DEFAULT_DRAIN_TIMEOUT
    if not drain_on_delete:
        raise ConfigError("drain_timeout_seconds", "only applies with drain_on_delete")
    if not known(timeout):
        return drain_on_delete, timeout
    return drain_on_delete, require_int("drain_timeout_seconds", timeout, *DRAIN_TIMEOUT_RANGE)


def queue_options(args: Mapping[str, Any]) -> tuple[pulumi.Input[int], pulumi.Input[bool]]:
    """The queue volume's size, and whether a host may be deleted with mail still queued."""
    size = args.get("queue_volume_gb", DEFAULT_QUEUE_VOLUME_GB)
    if known(size):
        size = require_int("queue_volume_gb", size, *QUEUE_VOLUME_GB_RANGE)
    discard = args.get("discard_queue_on_destroy", False)
    if known(discard):
        require_bool("discard_queue_on_destroy", discard)
    return size, discard


def whole_number(value: Any) -> Any:
    """2525.0 as 2525; anything else unchanged, for validation to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
