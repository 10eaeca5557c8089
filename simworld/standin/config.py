"""What a stand-in relay endpoint does, as one immutable value.

The fields mirror the service's Pro console ("relay server" settings): max sessions, receiving
interval, receiving size limit, SMTP AUTH and the acceptable network; plus TLS and fault
injection for tests. A session uses the configuration current when it was opened.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

AuthMode = Literal["sasl", "ip", "ip_or_sasl", "ip_and_sasl"]
IpRejectAt = Literal["connect", "mail"]

AUTH_MODES: Final = get_args(AuthMode)
IP_REJECT_AT: Final = get_args(IpRejectAt)
# Modes where a client IP outside allowed_ips is refused whatever it authenticates as.
IP_REQUIRED_MODES: Final = ("ip", "ip_and_sasl")

# Fixed once listening: they decide sockets and certificates, not per-session behaviour.
STATIC_FIELDS: Final = frozenset({"hosts", "port", "cert_names", "tls_dir"})
# Fault counts: setting one (at start or by reconfigure) arms that many upcoming events.
FAULT_FIELDS: Final = ("greeting_421_sessions", "data_451_messages", "drop_in_data_messages")


@dataclass(frozen=True)
class StandInConfig:
    """One stand-in's behaviour. Build with keywords; JSON objects load via ``from_dict``."""

    hosts: tuple[str, ...] = ("127.0.0.1",)
    """Literal IP addresses to listen on (``0.0.0.0`` and ``::`` allowed), all on one port."""
    port: int = 0
    """Port for every host; 0 picks a free one (see ``StandIn.port``). Production uses 10025."""
    hostname: str = "sandbox.smtps.jp"
    """Name in the greeting and EHLO reply."""
    cert_names: tuple[str, ...] = ()
    """Names and IPs the server certificate is valid for; empty = hostname + literal hosts."""
    tls_dir: str | None = None
    """Keep ``ca.pem``/``ca-key.pem`` here and reuse them across runs; None = a temp dir."""
    offer_starttls: bool = True
    """False strips STARTTLS from EHLO and refuses the command, as a downgrading attacker does."""
    pipelining: bool = True
    """Announce PIPELINING (RFC 2920), as Postfix's smtpd and most MTAs do; the service's EHLO
    reply is not documented. The client may then send MAIL, RCPT and DATA in one write."""
    auth_over_plaintext: bool = False
    """Advertise and accept AUTH before TLS (a server a careful client must not trust)."""
    auth_mode: AuthMode = "sasl"
    """sasl: AUTH required. ip: allowed_ips only, no AUTH offered. ip_or_sasl: either.
    ip_and_sasl: both."""
    users: Mapping[str, str] = field(default_factory=dict)
    """API user -> API key, checked for AUTH PLAIN and LOGIN."""
    allowed_ips: tuple[str, ...] = ()
    """The console's acceptable network: single IP addresses, no CIDR."""
    ip_reject_at: IpRejectAt = "connect"
    """Where a client outside allowed_ips is refused in ip modes: 554 greeting, or 550 at MAIL."""
    max_sessions_per_ip: int = 10
    """Concurrent sessions per client IP (G9); one more gets a 421 greeting."""
    receive_interval_ms: int = 0
    """Time the service spends per message: its 250 to end-of-DATA comes this long after the
    final dot arrived (timed by a thread, to well under a millisecond)."""
    size_limit: int = 10_240_000
    """Bytes; advertised as SIZE and enforced at MAIL and DATA with 552. 0 = no limit."""
    greeting_421_sessions: int = 0
    """Fault: this many upcoming sessions get a 421 greeting and are closed."""
    data_451_messages: int = 0
    """Fault: this many upcoming messages get 451 at end of DATA."""
    drop_in_data_messages: int = 0
    """Fault: this many upcoming messages have the connection dropped mid-DATA, no reply."""
    record_data: bool = True
    """Keep each message's bytes in records and events (off for big benchmark runs)."""

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("hosts: give at least one IP address to listen on")
        for name in ("hosts", "allowed_ips"):
            for value in getattr(self, name):
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ValueError(
                        f"{name}: {value!r} is not a single IP address (no names, no CIDR)"
                    ) from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is outside 0..65535")
        if self.auth_mode not in AUTH_MODES:
            raise ValueError(f"auth_mode: {self.auth_mode!r} is not one of {AUTH_MODES}")
        if self.ip_reject_at not in IP_REJECT_AT:
            raise ValueError(f"ip_reject_at: {self.ip_reject_at!r} is not one of {IP_REJECT_AT}")
        if self.max_sessions_per_ip < 1:
            raise ValueError("max_sessions_per_ip: must be at least 1")
        for name in ("receive_interval_ms", "size_limit", *FAULT_FIELDS):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")

    def tls_names(self) -> tuple[str, ...]:
        """Names the server certificate covers."""
        if self.cert_names:
            return self.cert_names
        wildcard = {"0.0.0.0", "::"}
        return (self.hostname, *(h for h in self.hosts if h not in wildcard))

    def with_changes(self, **changes: Any) -> StandInConfig:
        """A copy with ``changes`` applied (JSON lists accepted for tuple fields)."""
        return dataclasses.replace(self, **_coerce(changes))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StandInConfig:
        """Build from a JSON object; unknown keys are an error."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown StandInConfig keys: {sorted(unknown)}")
        return cls(**_coerce(data))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready object that ``from_dict`` reads back."""
        data = dataclasses.asdict(self)
        data["users"] = dict(self.users)
        return data


def _coerce(data: Mapping[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; the dataclass is frozen, so tuple fields must really be tuples.
    tuple_fields = {"hosts", "cert_names", "allowed_ips"}
    out = {k: tuple(v) if k in tuple_fields else v for k, v in data.items()}
    if "users" in out:
        out["users"] = dict(out["users"])
    return out
