"""What a stand-in saw: message records, counters, and the event stream both are built from.

Every occurrence is an event (a JSON object, one per line in an events file). ``Stats.apply``
folds events into counters; the running stand-in uses the same fold, so ``stats_from_events``
on its events file gives exactly what ``StandIn.stats()`` gave.

Event schema: every event has ``event`` (its kind) and ``t`` (Unix time, float). Events about
a connection also have ``session`` (int, per stand-in), ``ip`` (client IP) and the counts right
after the event: ``sessions_open``, ``sessions_open_from_ip``, ``deliveries_in_progress``,
``deliveries_in_progress_from_ip``.

- ``listening``: ``hosts``, ``port``, ``ca_path``.  ``down`` / ``up``: listeners closed/reopened.
- ``reconfigure``: ``changed`` (field names).  ``stopped``: the stand-in shut down.
- ``session_open``: ``port`` (client port).  ``session_close``: ``duration`` (s).
- ``session_refused``: ``reason`` (``too_many``, ``ip_not_allowed``, ``fault_421``), ``reply``.
- ``tls``: ``version``, ``cipher``.  ``tls_failed``: the handshake did not complete.
- ``auth``: one per AUTH command: ``mechanism``, ``tls`` (bool), ``user`` (or null),
  ``result`` (``ok``; ``invalid`` credentials, answered 535; ``rejected`` before any
  credential check, e.g. 538 without TLS, 503 in ip mode, a lost connection).
- ``delivery_start``: MAIL FROM accepted: ``mail_from``.
- ``delivery_end``: ``outcome`` (``accepted``, ``451``, ``dropped``, ``rejected``, ``reset``,
  ``lost``).
- ``message``: an accepted message: ``record`` (``MessageRecord.to_json()``).
- ``error_reply``: any 4xx/5xx reply sent: ``code`` (e.g. ``"530"``), ``reply``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Event = dict[str, Any]


@dataclass(frozen=True)
class MessageRecord:
    """One accepted message and the circumstances it arrived in."""

    session: int
    client_ip: str
    auth_user: str | None
    tls: bool
    tls_version: str | None
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message_id: str | None
    body_sha256: str
    """SHA-256 of the bytes after the first empty line, as received (CRLF line ends)."""
    size: int
    data: bytes | None
    """The message as received; None when ``record_data`` is off."""
    session_started_at: float
    mail_from_at: float
    received_at: float
    """End of DATA, before the receiving interval."""
    accepted_at: float
    """When the 250 reply was sent."""
    sessions_open: int
    """Sessions open from all IPs when DATA ended (this one included)."""
    sessions_open_from_ip: int
    deliveries_in_progress: int
    """Sessions between MAIL FROM and their end-of-DATA reply when DATA ended."""
    deliveries_in_progress_from_ip: int

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deep copy was the stand-in's costliest step
        # per message, and every field here is a plain value.
        out = {name: getattr(self, name) for name in _RECORD_FIELDS}
        out["rcpt_tos"] = list(self.rcpt_tos)
        del out["data"]
        out["data_b64"] = None if self.data is None else base64.b64encode(self.data).decode()
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MessageRecord:
        fields = dict(obj)
        data_b64 = fields.pop("data_b64")
        fields["data"] = None if data_b64 is None else base64.b64decode(data_b64)
        fields["rcpt_tos"] = tuple(fields["rcpt_tos"])
        return cls(**fields)


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(MessageRecord))


@dataclass
class Stats:
    """Counters folded from events. Refused connections count in sessions_total only."""

    sessions_total: int = 0
    """Connections accepted at TCP level, refused ones included."""
    sessions_open: int = 0
    peak_sessions: int = 0
    sessions_open_by_ip: dict[str, int] = field(default_factory=dict)
    peak_sessions_by_ip: dict[str, int] = field(default_factory=dict)
    refused_sessions: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    deliveries_in_progress: int = 0
    """Sessions between an accepted MAIL FROM and their end-of-DATA reply (or RSET, drop)."""
    peak_deliveries: int = 0
    deliveries_by_ip: dict[str, int] = field(default_factory=dict)
    peak_deliveries_by_ip: dict[str, int] = field(default_factory=dict)
    delivery_outcomes: dict[str, int] = field(default_factory=dict)
    messages_accepted: int = 0
    tls_handshakes: int = 0
    tls_failures: int = 0
    auth_attempts: int = 0
    auth_ok: int = 0
    auth_failed: int = 0
    """AUTH commands whose credentials were checked and rejected (535)."""
    auth_plaintext: int = 0
    """AUTH commands received before TLS: credentials may have crossed the wire in clear."""
    error_replies: dict[str, int] = field(default_factory=dict)
    """4xx/5xx replies sent, by code."""

    def apply(self, event: Mapping[str, Any]) -> None:
        """Fold one event into the counters."""
        kind = event["event"]
        ip = event.get("ip", "")
        if kind == "session_open":
            self.sessions_total += 1
            self.sessions_open += 1
            self.peak_sessions = max(self.peak_sessions, self.sessions_open)
            _raise_peak(self.sessions_open_by_ip, self.peak_sessions_by_ip, ip)
        elif kind == "session_close":
            self.sessions_open -= 1
            self.sessions_open_by_ip[ip] -= 1
        elif kind == "session_refused":
            self.sessions_total += 1
            self.refused_sessions += 1
            _bump(self.refused_by_reason, event["reason"])
        elif kind == "tls":
            self.tls_handshakes += 1
        elif kind == "tls_failed":
            self.tls_failures += 1
        elif kind == "auth":
            self.auth_attempts += 1
            self.auth_ok += event["result"] == "ok"
            self.auth_failed += event["result"] == "invalid"
            self.auth_plaintext += not event["tls"]
        elif kind == "delivery_start":
            self.deliveries_in_progress += 1
            self.peak_deliveries = max(self.peak_deliveries, self.deliveries_in_progress)
            _raise_peak(self.deliveries_by_ip, self.peak_deliveries_by_ip, ip)
        elif kind == "delivery_end":
            self.deliveries_in_progress -= 1
            self.deliveries_by_ip[ip] -= 1
            _bump(self.delivery_outcomes, event["outcome"])
        elif kind == "message":
            self.messages_accepted += 1
        elif kind == "error_reply":
            _bump(self.error_replies, event["code"])

    def counts(self, ip: str) -> dict[str, int]:
        """The concurrency counts events carry, for one client IP."""
        return {
            "sessions_open": self.sessions_open,
            "sessions_open_from_ip": self.sessions_open_by_ip.get(ip, 0),
            "deliveries_in_progress": self.deliveries_in_progress,
            "deliveries_in_progress_from_ip": self.deliveries_by_ip.get(ip, 0),
        }


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _raise_peak(current: dict[str, int], peak: dict[str, int], ip: str) -> None:
    _bump(current, ip)
    peak[ip] = max(peak.get(ip, 0), current[ip])


def read_events(path: str | Path) -> list[Event]:
    """The events in a stand-in's events file; a torn last line (writer killed) is skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    events = []
    for number, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
    return events


def stats_from_events(events: Iterable[Mapping[str, Any]]) -> Stats:
    """The counters ``StandIn.stats()`` would have shown after these events."""
    stats = Stats()
    for event in events:
        stats.apply(event)
    return stats


def messages_from_events(events: Iterable[Mapping[str, Any]]) -> list[MessageRecord]:
    """The accepted messages, in order of acceptance."""
    return [MessageRecord.from_json(e["record"]) for e in events if e["event"] == "message"]
