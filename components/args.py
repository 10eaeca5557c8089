"""The component's typed arguments and their validation: pure, tested directly.

No ``from __future__ import annotations`` here: Pulumi's schema analyzer (the component used
from other languages, ``components/provider.py``) reads these annotations as live types.
"""

import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Required, TypedDict

import pulumi

from cmc_relay.components.image import AMI_ID, check_image_refresh
from cmc_relay.userdata.metrics import DEFAULT_NAMESPACE
from cmc_relay.userdata.settings import (
    EGRESS_MODES,
    PRO_MAX_SESSIONS_LIMIT,
    VERIFICATION_MODES,
    ConfigError,
    Egress,
    RelaySettings,
    Verification,
    check_session_budget,
    parse_cidrs,
    parse_email,
    require_choice,
    require_int,
    secret_region,
)

DEFAULT_INSTANCE_TYPE: Final = "t3.small"
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
    """Arguments of :class:`components.RelayHost`; defaults as in the README's config table."""

    vpc_id: Required[pulumi.Input[str]]
    """VPC of the subnet; the security group is created in it."""
    subnet_id: Required[pulumi.Input[str]]
    """Subnet for the instance: public (routed to an internet gateway) for the Elastic IP."""
    allowed_cidrs: Required[Sequence[str]]
    """Client networks allowed to relay through the host (never 0.0.0.0/0)."""
    allowed_security_group_ids: Sequence[pulumi.Input[str]]
    """Security groups whose members may also connect to port 25."""
    plan: str
    """trial (default), standard or pro: chooses the SMTP host (G4)."""
    subdomain: str
    """Pro plan only, required there: SUBDOMAIN of SUBDOMAIN.smtps.jp."""
    smtp_host: str
    """Overrides the plan's SMTP host."""
    smtp_port: int
    """Port of the service's relay endpoint (default 10025)."""
    auth_mode: str
    """sasl (default, SMTP AUTH with the API user) or ip (Pro IP address authentication)."""
    credentials_secret_arn: pulumi.Input[str]
    """sasl: an existing secret whose value is {"username": ..., "password": ...}."""
    api_user: str
    """sasl: API user, with api_key: the component creates the secret itself."""
    api_key: pulumi.Input[str]
    """sasl: API key (pass it as a Pulumi secret)."""
    kms_key_arn: str
    """Customer-managed KMS key that encrypts the secret, if any."""
    os: str
    """debian-13 (default), debian-12, al2023 or ubuntu-24.04."""
    instance_type: str
    """EC2 instance type (default t3.small); Graviton types get arm64 images."""
    ami_id: str
    """The image, chosen by the user; by default the newest official image of ``os`` when the
    hosts are first created, kept until ``os``, the architecture or ``image_refresh`` changes."""
    image_refresh: str
    """Any token, such as a date: setting or changing it moves the hosts to the newest
    official image of ``os`` (they are replaced, one at a time)."""
    max_connections: int
    """Sessions to the service per sending IP (default 10; 1-10, up to 100 on pro) (G9)."""
    tls_level: str
    """TLS to the service (G11): secure (default: the certificate verified for the service's
    name, TLS 1.2 or newer), or with auth_mode ip only encrypt (unverified) or may (TLS if
    offered, else plain text), both weaker: see the README's security model."""
    message_size_limit: int
    """Largest message accepted, in bytes (default 10240000): the service's size limit."""
    host_name: str
    """Fully qualified host name of the relay (default cmc-relay.internal) (G2); the name
    applications send to (see ``dns_zone``)."""
    dns_zone: pulumi.Input[str]
    """Where ``host_name`` is published: ``private`` (default: a Route 53 private hosted zone
    for it, associated with the VPC), the id of an existing hosted zone (a record in it), or
    ``none`` (no record; smtp_endpoint is then an address)."""
    secret_refresh_minutes: int
    """How often the host re-reads the secret to pick up rotation (default 5)."""
    tags: Mapping[str, str]
    """Tags added to every resource that takes tags."""
    verification: str
    """Post-boot check that gates the deployment: ssm (default), ssh or none."""
    ssh_public_key: str
    """ssh verification: OpenSSH public key authorized for the OS's default user."""
    ssh_private_key: pulumi.Input[str]
    """ssh verification: the private key of that public key (pass it as a Pulumi secret)."""
    ssh_allowed_cidrs: Sequence[str]
    """ssh verification, required there: networks allowed to port 22 (never 0.0.0.0/0)."""
    ephemeral: bool
    """For throwaway stacks: the created secret is deleted at once, not after 30 days."""
    replicas: int
    """Number of relay hosts (default 1, at most 10); more than one sit behind a balancer."""
    subnet_ids: Sequence[pulumi.Input[str]]
    """With replicas > 1: one subnet per host, in order, starting with subnet_id (one per AZ)."""
    egress: str
    """eip (default: public subnets, an Elastic IP per host) or nat (private subnets)."""
    nat_gateway_ips: Sequence[str]
    """egress nat: the NAT gateways' public IPs, one for all hosts or one per host in order."""
    pro_max_sessions: int
    """Pro only: the console's max sessions (default 100), which all hosts together share."""
    drain_on_delete: bool
    """Drain each host's queue before deleting it (default: true with replicas > 1)."""
    drain_timeout_seconds: int
    """drain_on_delete: how long a drain waits for the queue to empty (default 600)."""
    queue_volume_gb: int
    """Size in GiB of each host's queue volume, the EBS volume holding the Postfix queue that
    moves to a replacement host (default 10, 1-1024; a change resizes it in place)."""
    discard_queue_on_destroy: bool
    """Let pulumi destroy (or a scale-in) delete a host whose queue still holds mail (default
    false: the deletion stops, naming how many messages are queued)."""
    sender_domain: str
    """Senders without a real domain (root@localhost, *.compute.internal, ...) become
    local-part@sender_domain, in the envelope and the From:/Sender: headers."""
    rewrite_domains: Sequence[str]
    """With sender_domain: more domains (and their subdomains) to rewrite to it."""
    allowed_sender_domains: Sequence[str]
    """When set, MAIL FROM outside these domains (after rewriting) is refused with 5.7.1."""
    operator_email: str
    """Mail for the relay's own root, postmaster and other local users goes here (needs
    sender_domain); without it, it stays in a mailbox on the host."""
    inbound_tls: str
    """STARTTLS offered to the applications: may (default), encrypt (required) or none."""
    keep_received_headers: bool
    """Pass the Received: headers on to the service (default false: they name internal hosts
    and addresses, so the relay removes them on the way out)."""
    inbound_tls_secret_arn: str
    """A secret holding the PEM key and certificate chain to offer; by default the host
    generates a self-signed certificate at first boot."""
    reboot_window: str
    """Maintenance window for reboots that installed updates require, "DAYS HH:MM" on the
    hosts' clock (UTC), e.g. "Sun 03:00"; host i reboots i x 30 minutes into it. Default:
    never reboot automatically (the RebootRequired alarm tells)."""
    client_message_rate_limit: int
    """Messages one client address may send per minute (default 1000; 0: no limit); over it,
    450 (try later). Loopback is exempt."""
    client_recipient_rate_limit: int
    """Recipients one client address may send to per minute (default 5000; 0: no limit)."""
    client_connection_limit: int
    """Connections one client address may hold at once (default 20, at most 100; 0: no
    limit); over it, 421."""
    metrics_namespace: str
    """CloudWatch namespace of the hosts' metrics (default CMCRelay; not AWS/...)."""
    log_retention_days: int
    """Days CloudWatch Logs keeps the mail log (default 30; a value CloudWatch Logs accepts)."""
    log_kms_key_arn: str
    """Customer-managed KMS key that encrypts the mail log group, if any."""
    alarms: bool
    """Alarms on the hosts' metrics and the balancer (default true); false: only the hosts'
    recovery alarms, and no topic."""
    alarm_topic_arn: pulumi.Input[str]
    """SNS topic the alarms notify; without it and alarm_email they notify nobody."""
    alarm_email: str
    """Instead of alarm_topic_arn: the component creates a topic with this e-mail subscribed."""
    alarm_deferred_threshold: int
    """Alarm when a host's deferred queue holds more messages for 10 minutes (default 100)."""
    alarm_oldest_message_minutes: int
    """Alarm when a host's oldest queued message is older, in minutes (default 30)."""
    alarm_bounced_threshold: int
    """Alarm when a host bounces this many messages in 5 minutes (default 1)."""
    alarm_refused_threshold: int
    """Alarm when the service refuses this many of a host's sessions in 5 minutes (default 5)."""
    alarm_queue_free_percent: int
    """Alarm when less of the queue's file system than this is free for 5 minutes, in percent
    (default 20; 1-99)."""
    alarm_reboot_required_days: int
    """Alarm when installed updates have waited this many days for a reboot (default 3; 1-7)."""
    alarm_sent_threshold: int
    """Alarm when a host sends more than this many messages in 5 minutes (default 5000)."""


_SETTINGS_FIELDS: Final = (
    "allowed_cidrs", "plan", "subdomain", "smtp_host", "smtp_port", "auth_mode", "os",
    "max_connections", "tls_level", "message_size_limit", "host_name", "secret_refresh_minutes",
    "sender_domain", "rewrite_domains", "allowed_sender_domains", "operator_email", "inbound_tls",
    "inbound_tls_secret_arn", "reboot_window", "client_message_rate_limit",
    "client_recipient_rate_limit", "client_connection_limit", "keep_received_headers",
)  # fmt: skip
_KNOWN_ARGS: Final = frozenset(RelayHostArgs.__annotations__)
# Pulumi's wire format has only doubles: from another language, smtp_port arrives as 2525.0.
_INT_ARGS: Final = frozenset(k for k, t in RelayHostArgs.__annotations__.items() if t is int)
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
    """The validated metrics, mail log and alarm arguments."""

    namespace: str = DEFAULT_NAMESPACE
    log_retention_days: int = DEFAULT_LOG_RETENTION_DAYS
    log_kms_key_arn: str | None = None
    alarms: bool = True
    alarm_topic_arn: pulumi.Input[str] | None = None
    alarm_email: str | None = None
    thresholds: AlarmThresholds = field(default_factory=AlarmThresholds)


@dataclass(frozen=True)
class HostOptions:
    """The validated arguments that shape AWS resources rather than files on the host."""

    instance_type: str = DEFAULT_INSTANCE_TYPE
    ami_id: str | None = None
    image_refresh: str | None = None
    dns_zone: pulumi.Input[str] = DNS_ZONE_PRIVATE
    kms_key_arn: str | None = None
    api_user: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    verification: Verification = "ssm"
    ssh_public_key: str | None = None
    ssh_allowed_cidrs: tuple[str, ...] = ()
    ephemeral: bool = False
    replicas: int = 1
    egress: Egress = "eip"
    nat_gateway_ips: tuple[str, ...] = ()
    drain_on_delete: bool = False
    drain_timeout_seconds: int = DEFAULT_DRAIN_TIMEOUT
    queue_volume_gb: int = DEFAULT_QUEUE_VOLUME_GB
    discard_queue_on_destroy: bool = False
    monitoring: MonitoringOptions = field(default_factory=MonitoringOptions)

    @property
    def architecture(self) -> str:
        return "arm64" if _ARM_INSTANCE_TYPE.match(self.instance_type) else "x86_64"


def validate_args(args: Mapping[str, Any]) -> tuple[RelaySettings, HostOptions]:
    """Refuse every invalid argument, naming it, before any resource is created."""
    unknown = sorted(set(args) - _KNOWN_ARGS)
    if unknown:
        raise ConfigError(unknown[0], f"unknown argument; known: {', '.join(sorted(_KNOWN_ARGS))}")
    for required in ("vpc_id", "subnet_id", "allowed_cidrs"):
        if args.get(required) is None:
            raise ConfigError(required, "is required")
    args = {k: whole_number(v) if k in _INT_ARGS else v for k, v in args.items()}
    settings = RelaySettings(**{k: args[k] for k in _SETTINGS_FIELDS if args.get(k) is not None})

    secret_arn = args.get("credentials_secret_arn")
    api_user, api_key = args.get("api_user"), args.get("api_key")
    if settings.uses_sasl:
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
        if api_user is not None and (
            not api_user or ":" in api_user or api_user != api_user.strip()
        ):
            raise ConfigError("api_user", f"{api_user!r} is not a valid API user name")
    elif any(value is not None for value in (secret_arn, api_user, api_key)):
        raise ConfigError(
            "auth_mode", "is ip: SMTP AUTH credentials are not used; remove them or use sasl"
        )
    if isinstance(secret_arn, str):
        secret_region(secret_arn)  # an Output is checked when its value is known

    instance_type = args.get("instance_type", DEFAULT_INSTANCE_TYPE)
    if not isinstance(instance_type, str) or not _INSTANCE_TYPE.match(instance_type):
        raise ConfigError("instance_type", f"{instance_type!r} is not an EC2 instance type")
    ami_id = args.get("ami_id")
    if ami_id is not None and not AMI_ID.match(ami_id):
        raise ConfigError("ami_id", f"{ami_id!r} is not an AMI id (ami-...)")
    image_refresh = args.get("image_refresh")
    if image_refresh is not None:
        check_image_refresh(image_refresh)
    dns_zone = args.get("dns_zone", DNS_ZONE_PRIVATE)
    if isinstance(dns_zone, str):
        checked_dns_zone(dns_zone)  # an Output is checked when its value is known
    kms_key_arn = args.get("kms_key_arn")
    if kms_key_arn is not None and not _KMS_KEY_ARN.match(kms_key_arn):
        raise ConfigError("kms_key_arn", f"{kms_key_arn!r} is not a KMS key ARN")
    if kms_key_arn is not None and not settings.uses_sasl:
        raise ConfigError("kms_key_arn", "only applies to auth_mode sasl (it encrypts the secret)")
    ephemeral = args.get("ephemeral", False)
    if not isinstance(ephemeral, bool):
        raise ConfigError("ephemeral", f"must be true or false; got {ephemeral!r}")
    verification, ssh_public_key, ssh_allowed_cidrs = verification_options(args)
    replicas, egress, nat_gateway_ips = fleet_options(args, settings)
    drain_on_delete, drain_timeout_seconds = drain_options(args, replicas)
    queue_volume_gb, discard_queue_on_destroy = queue_options(args)
    options = HostOptions(
        instance_type=instance_type,
        ami_id=ami_id,
        image_refresh=image_refresh,
        dns_zone=dns_zone,
        kms_key_arn=kms_key_arn,
        api_user=api_user,
        tags=dict(args.get("tags") or {}),
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


def monitoring_options(args: Mapping[str, Any]) -> MonitoringOptions:
    """Where the metrics and the mail log go, and which alarms notify whom."""
    namespace = args.get("metrics_namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace) or not namespace.strip():
        raise ConfigError(
            "metrics_namespace",
            f"{namespace!r} is not a CloudWatch namespace (up to 255 of A-Z a-z 0-9 . - _ / # :)",
        )
    if namespace.startswith("AWS/"):
        raise ConfigError("metrics_namespace", f"{namespace!r}: AWS/ is reserved for AWS services")
    retention = args.get("log_retention_days", DEFAULT_LOG_RETENTION_DAYS)
    if isinstance(retention, bool) or retention not in LOG_RETENTION_DAYS:
        raise ConfigError(
            "log_retention_days",
            f"got {retention!r}; CloudWatch Logs accepts {', '.join(map(str, LOG_RETENTION_DAYS))}",
        )
    log_kms_key_arn = args.get("log_kms_key_arn")
    if log_kms_key_arn is not None and not _KMS_KEY_ARN.match(str(log_kms_key_arn)):
        raise ConfigError("log_kms_key_arn", f"{log_kms_key_arn!r} is not a KMS key ARN")
    alarms = args.get("alarms", True)
    if not isinstance(alarms, bool):
        raise ConfigError("alarms", f"must be true or false; got {alarms!r}")
    if not alarms:
        given = [name for name in _ALARM_ARGS if args.get(name) is not None]
        if given:
            raise ConfigError(given[0], "has no effect with alarms false; remove it")
    topic_arn, email = args.get("alarm_topic_arn"), args.get("alarm_email")
    if topic_arn is not None and email is not None:
        raise ConfigError(
            "alarm_email", "give either alarm_topic_arn or alarm_email (a topic is created for it)"
        )
    if isinstance(topic_arn, str):
        checked_topic_arn(topic_arn)  # an Output is checked when its value is known
    thresholds = AlarmThresholds(
        **{
            field_name: require_int(name, args[name], low, high)
            for name, (field_name, low, high) in _THRESHOLD_ARGS.items()
            if args.get(name) is not None
        }
    )
    return MonitoringOptions(
        namespace=namespace,
        log_retention_days=retention,
        log_kms_key_arn=log_kms_key_arn,
        alarms=alarms,
        alarm_topic_arn=topic_arn,
        alarm_email=None if email is None else parse_email("alarm_email", email),
        thresholds=thresholds,
    )


def checked_topic_arn(arn: str) -> str:
    """An SNS topic's ARN, refused with the service it does name when it is another's."""
    if _SNS_TOPIC_ARN.match(arn):
        return arn
    other = _ARN.match(arn)
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
) -> tuple[Verification, str | None, tuple[str, ...]]:
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
    if not isinstance(public_key, str) or not _SSH_PUBLIC_KEY.match(public_key.strip()):
        raise ConfigError(
            "ssh_public_key", "must be one OpenSSH public key line (ssh-ed25519 AAAA... comment)"
        )
    cidrs = parse_cidrs(
        "ssh_allowed_cidrs",
        args["ssh_allowed_cidrs"],
        "would open SSH to the whole internet; list the networks you deploy from instead",
    )
    return verification, public_key.strip(), cidrs


def fleet_options(
    args: Mapping[str, Any], settings: RelaySettings
) -> tuple[int, Egress, tuple[str, ...]]:
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
    addresses = parse_addresses("nat_gateway_ips", nat_gateway_ips or ())
    pro_max_sessions = args.get("pro_max_sessions")
    if pro_max_sessions is not None:
        if settings.plan != "pro":
            raise ConfigError(
                "pro_max_sessions", f"only applies to plan pro; it is {settings.plan}"
            )
        require_int("pro_max_sessions", pro_max_sessions, 1, PRO_MAX_SESSIONS_LIMIT)
    check_session_budget(settings, replicas, addresses, pro_max_sessions or PRO_MAX_SESSIONS_LIMIT)
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


def drain_options(args: Mapping[str, Any], replicas: int) -> tuple[bool, int]:
    """Whether hosts drain before deletion, and for how long at most."""
    drain_on_delete = args.get("drain_on_delete", replicas > 1)
    if not isinstance(drain_on_delete, bool):
        raise ConfigError("drain_on_delete", f"must be true or false; got {drain_on_delete!r}")
    timeout = args.get("drain_timeout_seconds")
    if timeout is None:
        return drain_on_delete, DEFAULT_DRAIN_TIMEOUT
    if not drain_on_delete:
        raise ConfigError("drain_timeout_seconds", "only applies with drain_on_delete")
    return drain_on_delete, require_int("drain_timeout_seconds", timeout, *DRAIN_TIMEOUT_RANGE)


def queue_options(args: Mapping[str, Any]) -> tuple[int, bool]:
    """The queue volume's size, and whether a host may be deleted with mail still queued."""
    size = require_int(
        "queue_volume_gb",
        args.get("queue_volume_gb", DEFAULT_QUEUE_VOLUME_GB),
        *QUEUE_VOLUME_GB_RANGE,
    )
    discard = args.get("discard_queue_on_destroy", False)
    if not isinstance(discard, bool):
        raise ConfigError("discard_queue_on_destroy", f"must be true or false; got {discard!r}")
    return size, discard


def whole_number(value: Any) -> Any:
    """2525.0 as 2525; anything else unchanged, for validation to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
