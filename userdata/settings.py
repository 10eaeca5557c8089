"""What the relay host needs to know, validated: the single source for every rendered file.

Each field maps to a stack config key (camelCase, read by ``__main__.py``) and a component
argument (snake_case). Errors name both, say what is allowed, and are raised before any
resource exists.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

Plan = Literal["trial", "standard", "pro"]
AuthMode = Literal["sasl", "ip"]
OsName = Literal["al2023", "debian-12", "debian-13", "ubuntu-24.04"]
TlsLevel = Literal["may", "encrypt", "secure"]
Verification = Literal["ssm", "ssh", "none"]
Egress = Literal["eip", "nat"]
InboundTls = Literal["may", "encrypt", "none"]

PLANS: Final = get_args(Plan)
AUTH_MODES: Final = get_args(AuthMode)
OS_NAMES: Final = get_args(OsName)
# The OS whose image twin CI boots end to end on every change (see the README).
DEFAULT_OS: Final[OsName] = "debian-13"
DEFAULT_SMTP_PORT: Final = 10025  # the service's relay port (G3)
TLS_LEVELS: Final = get_args(TlsLevel)
VERIFICATION_MODES: Final = get_args(Verification)
EGRESS_MODES: Final = get_args(Egress)
INBOUND_TLS_LEVELS: Final = get_args(InboundTls)

# G4: the service's SMTP host per plan; Pro hosts are per customer.
PLAN_SMTP_HOSTS: Final[dict[str, str]] = {
    "trial": "sandbox.smtps.jp",
    "standard": "te.smtps.jp",
    "pro": "{subdomain}.smtps.jp",
}
# G9 allows 10 sessions per sending IP; a Pro console may set up to 100.
MAX_CONNECTIONS_LIMIT: Final[dict[str, int]] = {"trial": 10, "standard": 10, "pro": 100}
PRO_MAX_SESSIONS_LIMIT: Final = MAX_CONNECTIONS_LIMIT["pro"]
# Per-client limits on the port applications send to, per minute (anvil_rate_time_unit) and at
# once. The relay delivers at most maxConnections (10, G9) x 1000 / receiving interval
# messages a second: 3,000 a minute at 200 ms (0.97 of it measured, the README's Performance).
# One client sending 1,000 a minute takes a third of that, far beyond what an application
# server sends through a relay; 5 recipients a message on average at that rate; 20 connections
# at once leave 80 of smtpd's 100 processes (default_process_limit) to the others.
CLIENT_MESSAGE_RATE_LIMIT: Final = 1000
CLIENT_RECIPIENT_RATE_LIMIT: Final = 5000
CLIENT_CONNECTION_LIMIT: Final = 20
# Above this a connection limit never binds: smtpd runs at most 100 processes.
SMTPD_PROCESS_LIMIT: Final = 100
CLIENT_RATE_LIMIT_MAX: Final = 1_000_000

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# The local part of an address as mail systems take it without quoting (RFC 5322 dot-atom).
# Without '$' and '%', which Postfix's tables and routing would read as syntax.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#&'*+/=?^_`{|}~-]+)*$")
_SECRET_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):secretsmanager:(?P<region>[a-z]{2}(-[a-z]+)+-\d):"
    r"\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"
)
# Names EC2 and the OS give hosts, never a domain the service accepts as a sender:
# ip-10-0-1-5.ap-northeast-1.compute.internal, and ip-10-0-1-5.ec2.internal in us-east-1.
INTERNAL_DOMAINS: Final = ("localhost", "localhost.localdomain", "compute.internal", "ec2.internal")
_WORLD = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
# Postfix refuses mail when less than queue_minfree is free and asks for at least 1.5 x
# message_size_limit there; 2 x leaves room for one more largest message already past the check
# (smtpd checks at MAIL FROM, then writes) and for the bounce and defer logs of what is queued.
QUEUE_MINFREE_FACTOR: Final = 2
DEFAULT_HOST_NAME: Final = "cmc-relay.internal"
# rebootWindow: days (or "daily") and a time of day, on the host's clock (UTC on the images).
WEEKDAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_REBOOT_WINDOW = re.compile(
    r"^(?P<days>daily|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)(?:,(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun))*)"
    r" (?P<hour>[01]\d|2[0-3]):(?P<minute>[0-5]\d)$"
)
# Host i reboots this many minutes after host i-1's turn: one host at a time is down.
REBOOT_STAGGER_MINUTES: Final = 30


def config_key(name: str) -> str:
    """An argument's stack config key: its name in camelCase (``smtp_port`` -> ``smtpPort``)."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class ConfigError(ValueError):
    """An invalid setting, named by its component argument and its stack config key
    (``has_config_key`` False: no stack config sets it, or it is no argument but a typo)."""

    def __init__(self, name: str, problem: str, *, has_config_key: bool = True) -> None:
        key = config_key(name) if has_config_key else name
        label = name if key == name else f"{name} (config {key})"
        super().__init__(f"{label}: {problem}")
        self.name = name


def is_dns_name(value: str) -> bool:
    """A host name of one or more RFC 1123 labels, lower case, without a trailing dot."""
    return len(value) <= 253 and all(_DNS_LABEL.match(label) for label in value.split("."))


def require_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"got {value!r}; allowed: {', '.join(allowed)}")


def require_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false; got {value!r}")
    return value


def require_int(name: str, value: object, low: int, high: int, why: str = "") -> int:
    # bool is an int in Python; a config typo like `true` must not become 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer; got {value!r}")
    if not low <= value <= high:
        suffix = f" {why}" if why else ""
        raise ConfigError(name, f"must be between {low} and {high}{suffix}; got {value}")
    return value


def secret_region(arn: object, name: str = "credentials_secret_arn") -> str:
    """The region of a Secrets Manager secret ARN; the host reads the secret there."""
    match = _SECRET_ARN.match(arn) if isinstance(arn, str) else None
    if match is None:
        raise ConfigError(
            name,
            f"{arn!r} is not a Secrets Manager secret ARN "
            "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)",
        )
    return match["region"]


def parse_domain(name: str, value: object) -> str:
    """A mail domain: a host name of two or more labels, lower-cased."""
    domain = value.strip().lower() if isinstance(value, str) else value
    if not isinstance(domain, str) or "." not in domain or not is_dns_name(domain):
        raise ConfigError(name, f"{value!r} is not a domain name (like example.com)")
    return domain


def parse_domains(name: str, values: object) -> tuple[str, ...]:
    """A list of mail domains, each once."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise ConfigError(name, f"must be a list of domain names; got {values!r}")
    domains = [parse_domain(name, value) for value in values]
    repeated = sorted(domain for domain, count in Counter(domains).items() if count > 1)
    if repeated:
        raise ConfigError(name, f"lists {repeated[0]} more than once")
    return tuple(domains)


def parse_email(name: str, value: object) -> str:
    """One plain address, local@domain, as an operator's mailbox is written."""
    local, at, domain = value.rpartition("@") if isinstance(value, str) else ("", "", "")
    if not at or not _LOCAL_PART.match(local) or len(str(value)) > 254:
        raise ConfigError(name, f"{value!r} is not an e-mail address (like ops@example.com)")
    return f"{local}@{parse_domain(name, domain)}"


def reboot_calendar(window: str) -> str:
    """``rebootWindow`` ("Sun 03:00", "Sat,Sun 04:30", "daily 02:00") as a systemd
    OnCalendar expression ("Sun *-*-* 03:00:00")."""
    match = _REBOOT_WINDOW.match(window) if isinstance(window, str) else None
    if match is None:
        raise ConfigError(
            "reboot_window",
            f"{window!r} is not a maintenance window: DAYS HH:MM, DAYS being daily or day "
            f"names joined by commas ({', '.join(WEEKDAYS)}), e.g. 'Sun 03:00'",
        )
    days = "" if match["days"] == "daily" else f"{match['days']} "
    return f"{days}*-*-* {match['hour']}:{match['minute']}:00"


def is_within(domain: str, parents: Sequence[str]) -> bool:
    """``domain`` is one of ``parents`` or a subdomain of one."""
    return any(domain == parent or domain.endswith("." + parent) for parent in parents)


def parse_allowed_cidrs(values: object) -> tuple[str, ...]:
    """The client networks allowed to relay: valid, not the whole internet, normalised."""
    return parse_cidrs(
        "allowed_cidrs",
        values,
        "would make the host an open relay to the internet; list your client networks instead",
    )


def parse_cidrs(name: str, values: object, world_problem: str) -> tuple[str, ...]:
    """Networks admitted to a port: valid, not the whole internet, normalised, deduplicated."""
    if isinstance(values, str) or not isinstance(values, list | tuple) or not values:
        raise ConfigError(name, f"must be a non-empty list of CIDR blocks; got {values!r}")
    networks = []
    for value in values:
        try:
            network = ipaddress.ip_network(str(value), strict=True)
        except ValueError as error:
            raise ConfigError(name, f"{value!r} is not a valid CIDR block ({error})") from None
        if network in _WORLD:
            raise ConfigError(name, f"{value} {world_problem}")
        networks.append(network.compressed)
    return tuple(dict.fromkeys(networks))


def hosts_per_sending_ip(replicas: int, nat_gateway_ips: Sequence[str]) -> Counter[str]:
    """How many hosts send through each NAT address: one address carries every host, or
    one address per host, host i behind the i-th (addresses may repeat)."""
    if len(nat_gateway_ips) == 1:
        return Counter({nat_gateway_ips[0]: replicas})
    if len(nat_gateway_ips) != replicas:
        raise ConfigError(
            "nat_gateway_ips",
            f"give one address (every host sends through it) or {replicas}, one per host in "
            f"the order of the subnets; got {len(nat_gateway_ips)}",
        )
    return Counter(nat_gateway_ips)


def check_session_budget(
    settings: RelaySettings,
    replicas: int,
    nat_gateway_ips: Sequence[str] = (),
    pro_max_sessions: int = PRO_MAX_SESSIONS_LIMIT,
) -> None:
    """G9: the service counts sessions per sending IP, not per host; a Pro console also caps
    the total. Each host opens up to max_connections sessions. With an Elastic IP a host is
    alone behind its address (RelaySettings holds max_connections to the plan's limit); behind
    NAT (``nat_gateway_ips``) the hosts sharing an address share its limit.
    """
    sessions = settings.max_connections
    behind_nat = hosts_per_sending_ip(replicas, nat_gateway_ips) if nat_gateway_ips else {}
    if settings.plan == "pro":
        total = replicas * sessions
        if total > pro_max_sessions:
            raise ConfigError(
                "max_connections",
                f"{_hosts_times(replicas, sessions)} = {total} sessions > "
                f"proMaxSessions {pro_max_sessions} (the console's max sessions); "
                + _advice(pro_max_sessions, replicas),
            )
        return
    per_ip = MAX_CONNECTIONS_LIMIT[settings.plan]
    for address, hosts in behind_nat.items():
        if hosts * sessions > per_ip:
            raise ConfigError(
                "max_connections",
                f"{_hosts_times(hosts, sessions)} behind NAT IP {address} = "
                f"{hosts * sessions} sessions > {per_ip} allowed per sending IP on plan "
                f"{settings.plan} (G9); " + _advice(per_ip, hosts),
            )


def _advice(limit: int, hosts: int) -> str:
    if hosts > limit:
        return f"at most {limit} hosts fit, each with maxConnections 1"
    return f"set maxConnections to at most {limit // hosts}"


def _hosts_times(hosts: int, sessions: int) -> str:
    """The left side of the budget's arithmetic, for error messages."""
    noun = "host" if hosts == 1 else "hosts"
    return f"{hosts} {noun} \N{MULTIPLICATION SIGN} maxConnections {sessions}"


def check_subdomain(value: object) -> None:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ConfigError(
            "subdomain",
            f"{value!r} is not a DNS label "
            "(1-63 lower-case letters, digits or '-', not at either end)",
        )


def check_smtp_host(value: object) -> None:
    if not isinstance(value, str) or not is_dns_name(value):
        raise ConfigError("smtp_host", f"{value!r} is not a valid host name")


def check_max_connections(value: object, plan: str) -> None:
    limit = MAX_CONNECTIONS_LIMIT[plan]
    require_int("max_connections", value, 1, limit, f"on plan {plan}")


def check_message_size_limit(value: object) -> None:
    # The service's size limit is set in KB; below 1 KB nothing useful gets through.
    require_int("message_size_limit", value, 1024, 2**31 - 1, "bytes")


def check_host_name(value: object) -> None:
    if not isinstance(value, str) or "." not in value or not is_dns_name(value):
        raise ConfigError("host_name", f"{value!r} must be a fully qualified lower-case host name")


def check_secret_refresh_minutes(value: object) -> None:
    require_int("secret_refresh_minutes", value, 1, 1440)


def check_client_rate_limit(name: str, value: object) -> None:
    require_int(name, value, 0, CLIENT_RATE_LIMIT_MAX, "per minute")  # 0: off, as in Postfix


def check_client_connection_limit(value: object) -> None:
    require_int(
        "client_connection_limit",
        value,
        0,
        SMTPD_PROCESS_LIMIT,
        "(smtpd runs at most 100 processes)",
    )


# Each setting's check of its own value, as RelaySettings makes it (with the plan, which must
# be known), for a value known before the others: the checks across settings wait for them.
SETTING_CHECKS: Final[dict[str, Callable[[object, str], object]]] = {
    "allowed_cidrs": lambda value, plan: parse_allowed_cidrs(value),
    "subdomain": lambda value, plan: check_subdomain(value),
    "smtp_host": lambda value, plan: check_smtp_host(value),
    "smtp_port": lambda value, plan: require_int("smtp_port", value, 1, 65535),
    "max_connections": check_max_connections,
    "tls_level": lambda value, plan: require_choice("tls_level", value, TLS_LEVELS),
    "message_size_limit": lambda value, plan: check_message_size_limit(value),
    "host_name": lambda value, plan: check_host_name(value),
    "secret_refresh_minutes": lambda value, plan: check_secret_refresh_minutes(value),
    "sender_domain": lambda value, plan: parse_domain("sender_domain", value),
    "rewrite_domains": lambda value, plan: parse_domains("rewrite_domains", value),
    "allowed_sender_domains": lambda value, plan: parse_domains("allowed_sender_domains", value),
    "operator_email": lambda value, plan: parse_email("operator_email", value),
    "inbound_tls": lambda value, plan: require_choice("inbound_tls", value, INBOUND_TLS_LEVELS),
    "inbound_tls_secret_arn": lambda value, plan: secret_region(value, "inbound_tls_secret_arn"),
    "keep_received_headers": lambda value, plan: require_bool("keep_received_headers", value),
    "client_message_rate_limit": lambda value, plan: check_client_rate_limit(
        "client_message_rate_limit", value
    ),
    "client_recipient_rate_limit": lambda value, plan: check_client_rate_limit(
        "client_recipient_rate_limit", value
    ),
    "client_connection_limit": lambda value, plan: check_client_connection_limit(value),
}


@dataclass(frozen=True)
class RelaySettings:
    """Validated, plain-value settings of one relay host (no secrets, no Pulumi outputs)."""

    allowed_cidrs: tuple[str, ...]
    plan: Plan = "trial"
    subdomain: str | None = None
    smtp_host: str | None = None
    smtp_port: int = DEFAULT_SMTP_PORT
    auth_mode: AuthMode = "sasl"
    os: OsName = DEFAULT_OS
    max_connections: int = 10
    tls_level: TlsLevel = "secure"
    message_size_limit: int = 10_240_000
    host_name: str = DEFAULT_HOST_NAME
    secret_refresh_minutes: int = 5
    sender_domain: str | None = None
    rewrite_domains: tuple[str, ...] = ()
    allowed_sender_domains: tuple[str, ...] = ()
    operator_email: str | None = None
    inbound_tls: InboundTls = "may"
    inbound_tls_secret_arn: str | None = None
    reboot_window: str | None = None
    client_message_rate_limit: int = CLIENT_MESSAGE_RATE_LIMIT
    client_recipient_rate_limit: int = CLIENT_RECIPIENT_RATE_LIMIT
    client_connection_limit: int = CLIENT_CONNECTION_LIMIT
    keep_received_headers: bool = False
    relay_host: str = field(init=False)

    def __post_init__(self) -> None:
        require_choice("plan", self.plan, PLANS)
        require_choice("auth_mode", self.auth_mode, AUTH_MODES)
        require_choice("os", self.os, OS_NAMES)
        require_choice("tls_level", self.tls_level, TLS_LEVELS)
        object.__setattr__(self, "allowed_cidrs", parse_allowed_cidrs(self.allowed_cidrs))
        if self.plan == "pro":
            if not self.subdomain:
                raise ConfigError("subdomain", "is required with plan pro (SUBDOMAIN.smtps.jp)")
            check_subdomain(self.subdomain)
        elif self.subdomain is not None:
            raise ConfigError("subdomain", f"only applies to plan pro; plan is {self.plan}")
        if self.auth_mode == "ip" and self.plan != "pro":
            raise ConfigError(
                "auth_mode", f"'ip' (IP address authentication) needs plan pro; plan is {self.plan}"
            )
        if self.uses_sasl and self.tls_level != "secure":
            raise ConfigError(
                "tls_level",
                f"{self.tls_level!r} with auth_mode sasl: the relay sends the API key only over "
                "TLS with a verified certificate, which only 'secure' gives, so every message "
                "would wait in the queue; remove the setting (default secure). "
                "'encrypt' and 'may' apply to auth_mode ip",
            )
        require_bool("keep_received_headers", self.keep_received_headers)
        if self.smtp_host is not None:
            check_smtp_host(self.smtp_host)
        require_int("smtp_port", self.smtp_port, 1, 65535)
        check_max_connections(self.max_connections, self.plan)
        check_message_size_limit(self.message_size_limit)
        check_host_name(self.host_name)
        check_secret_refresh_minutes(self.secret_refresh_minutes)
        self._check_mail_policy()
        require_choice("inbound_tls", self.inbound_tls, INBOUND_TLS_LEVELS)
        if self.inbound_tls_secret_arn is not None:
            if self.inbound_tls == "none":
                raise ConfigError(
                    "inbound_tls_secret_arn", "only applies with inbound_tls may or encrypt"
                )
            secret_region(self.inbound_tls_secret_arn, "inbound_tls_secret_arn")
        if self.reboot_window is not None:
            reboot_calendar(self.reboot_window)
        for name in ("client_message_rate_limit", "client_recipient_rate_limit"):
            check_client_rate_limit(name, getattr(self, name))
        check_client_connection_limit(self.client_connection_limit)
        host = self.smtp_host or PLAN_SMTP_HOSTS[self.plan].format(subdomain=self.subdomain)
        object.__setattr__(self, "relay_host", host)

    def _check_mail_policy(self) -> None:
        """Sender rewriting, the allowed senders and the operator's address agree."""
        normalised: dict[str, object] = {
            "rewrite_domains": parse_domains("rewrite_domains", self.rewrite_domains),
            "allowed_sender_domains": parse_domains(
                "allowed_sender_domains", self.allowed_sender_domains
            ),
        }
        if self.sender_domain is not None:
            normalised["sender_domain"] = parse_domain("sender_domain", self.sender_domain)
        if self.operator_email is not None:
            normalised["operator_email"] = parse_email("operator_email", self.operator_email)
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        sender, allowed = self.sender_domain, self.allowed_sender_domains
        if sender is not None and is_within(sender, self.internal_domains):
            raise ConfigError(
                "sender_domain", f"{sender} is one of the names it replaces; give your mail domain"
            )
        if self.rewrite_domains and sender is None:
            raise ConfigError("rewrite_domains", "only applies with sender_domain (their new name)")
        for domain in (sender, *allowed) if sender is not None else ():
            if is_within(domain, self.rewrite_domains):
                raise ConfigError(
                    "rewrite_domains",
                    f"covers {domain}, a sender domain as it is (sender_domain or "
                    "allowed_sender_domains): mail from it would never be sent under its name",
                )
        if sender is not None and allowed and sender not in allowed:
            raise ConfigError(
                "sender_domain",
                f"{sender} is not in allowed_sender_domains: every rewritten sender would be "
                "refused; add it there",
            )
        if self.operator_email is not None:
            if sender is None:
                raise ConfigError(
                    "operator_email",
                    "needs sender_domain: the relay's own mail is sent as root@"
                    f"{self.host_name}, which the service refuses as a sender",
                )
            if is_within(self.operator_email.rpartition("@")[2], self.internal_domains):
                raise ConfigError(
                    "operator_email", "must be a mailbox outside the relay (it forwards there)"
                )

    @property
    def local_domains(self) -> tuple[str, ...]:
        """Domains whose mail the relay delivers itself (G2): mydestination, the transport's
        local entries, the recipients ``operator_email`` takes."""
        domain = self.host_name.split(".", 1)[1]
        names = (self.host_name, self.short_host_name, f"localhost.{domain}", "localhost")
        return tuple(dict.fromkeys((*names, "localhost.localdomain")))

    @property
    def internal_domains(self) -> tuple[str, ...]:
        """Sender domains that are no real domain: ``sender_domain`` replaces them (and their
        subdomains), along with ``rewrite_domains``."""
        return tuple(dict.fromkeys((*self.local_domains, *INTERNAL_DOMAINS)))

    @property
    def rewritten_domains(self) -> tuple[str, ...]:
        """With ``sender_domain``: the domains it replaces, with their subdomains; single-label
        names (``localhost``, the short host name) are replaced as every single label is."""
        if self.sender_domain is None:
            return ()
        return tuple(d for d in (*self.internal_domains, *self.rewrite_domains) if "." in d)

    @property
    def queue_minfree(self) -> int:
        """Postfix's queue_minfree, in bytes: see QUEUE_MINFREE_FACTOR."""
        return QUEUE_MINFREE_FACTOR * self.message_size_limit

    @property
    def reboot_calendar(self) -> str | None:
        """The maintenance window as systemd's OnCalendar; None: never reboot automatically."""
        return None if self.reboot_window is None else reboot_calendar(self.reboot_window)

    @property
    def next_hop(self) -> str:
        """The transport's next hop, and so the password table's key (G3, G7)."""
        return f"[{self.relay_host}]:{self.smtp_port}"

    @property
    def short_host_name(self) -> str:
        return self.host_name.split(".", 1)[0]

    @property
    def uses_sasl(self) -> bool:
        return self.auth_mode == "sasl"
