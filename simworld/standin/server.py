"""The stand-in itself: aiosmtpd's SMTP protocol with the service's policies, on a loop thread.

aiosmtpd gives the SMTP state machine, STARTTLS, AUTH PLAIN/LOGIN and SIZE. This module adds
what the service does on top (session cap, IP and AUTH policy, receiving interval), fault
injection, and accounting. Accounting overrides a few of aiosmtpd's private methods
(``_handle_client``, ``_set_rset_state``, ``_set_post_data_state``): they are the only places
that see the greeting and every end of a transaction; pyproject pins aiosmtpd >= 1.4.6.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.parser
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, AnyStr, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

from . import tls
from .config import FAULT_FIELDS, IP_REQUIRED_MODES, STATIC_FIELDS, StandInConfig
from .records import Event, MessageRecord, Stats

T = TypeVar("T")

_log = logging.getLogger(__name__)

# Upper bound for any one call into the loop thread (start, stop, down, up).
_LOOP_CALL_TIMEOUT_S = 10.0
# Receiving intervals timed at once; more wait for a thread (longer, never shorter).
_INTERVAL_TIMERS = 256


class _State:
    """What sessions and the caller's thread share. One lock guards it, so a reader never sees
    a count without the event that changed it."""

    def __init__(self, config: StandInConfig, events: IO[str] | None) -> None:
        # Condition's default lock is an RLock: admit() emits while holding it.
        self._cond = threading.Condition()
        self._config = config
        self._events = events
        self._stats = Stats()
        self._messages: list[MessageRecord] = []
        self._faults = {name: getattr(config, name) for name in FAULT_FIELDS}
        self._session_ids = itertools.count(1)
        # Sessions with a live transport; touched on the loop thread only.
        self.live: set[_RelaySMTP] = set()
        # asyncio's timers fire up to a millisecond late (epoll waits in whole milliseconds):
        # 2 % of a 50 ms interval that would be charged to the client. Threads wait precisely.
        self._interval_timers = ThreadPoolExecutor(_INTERVAL_TIMERS, "standin-interval")
        self._stopping = threading.Event()

    @property
    def config(self) -> StandInConfig:
        return self._config

    def next_session_id(self) -> int:
        return next(self._session_ids)

    def emit(self, kind: str, **fields: Any) -> None:
        """Record one event: fold it into the stats, then write it with the counts after it."""
        with self._cond:
            event: Event = {"event": kind, "t": time.time(), **fields}
            self._stats.apply(event)
            if "ip" in fields:
                event.update(self._stats.counts(fields["ip"]))
            if self._events is not None:
                self._events.write(json.dumps(event) + "\n")
                self._events.flush()
            self._cond.notify_all()

    def admit(self, session: int, ip: str, port: int, config: StandInConfig) -> str | None:
        """Open a session, or return the greeting that refuses it."""
        with self._cond:
            if self._stats.sessions_open_by_ip.get(ip, 0) >= config.max_sessions_per_ip:
                reason, reply = "too_many", "421 4.7.0 Too many connections"
            elif (
                config.auth_mode in IP_REQUIRED_MODES
                and config.ip_reject_at == "connect"
                and not _listed(ip, config.allowed_ips)
            ):
                reason, reply = "ip_not_allowed", "554 5.7.1 Client host not in acceptable network"
            elif self.take_fault("greeting_421_sessions"):
                reason, reply = "fault_421", "421 4.3.2 Service not available (injected fault)"
            else:
                self.emit("session_open", session=session, ip=ip, port=port)
                return None
            self.emit("session_refused", session=session, ip=ip, reason=reason, reply=reply)
            return reply

    def take_fault(self, name: str) -> bool:
        """Use up one armed fault of this kind, if any is left."""
        with self._cond:
            if self._faults[name] == 0:
                return False
            self._faults[name] -= 1
            return True

    def counts(self, ip: str) -> dict[str, int]:
        with self._cond:
            return self._stats.counts(ip)

    async def hold_until(self, deadline: float) -> None:
        """Return at ``deadline`` (``time.time()`` scale), or at once when stopping."""
        remaining = deadline - time.time()
        if remaining > 0:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._interval_timers, self._stopping.wait, remaining)

    def stop_timers(self) -> None:
        self._stopping.set()
        self._interval_timers.shutdown(wait=False, cancel_futures=True)

    def reconfigure(self, changes: dict[str, Any]) -> StandInConfig:
        fixed = STATIC_FIELDS & changes.keys()
        if fixed:
            raise ValueError(f"{sorted(fixed)} are fixed once listening; start a new StandIn")
        with self._cond:
            self._config = self._config.with_changes(**changes)
            for name in FAULT_FIELDS:
                if name in changes:
                    self._faults[name] = changes[name]
            self.emit("reconfigure", changed=sorted(changes))
            return self._config

    def add_message(self, record: MessageRecord) -> None:
        with self._cond:
            self._messages.append(record)
            self.emit(
                "message", session=record.session, ip=record.client_ip, record=record.to_json()
            )

    def messages(self) -> list[MessageRecord]:
        with self._cond:
            return list(self._messages)

    def stats(self) -> Stats:
        with self._cond:
            return copy.deepcopy(self._stats)

    def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(f"stand-in: {what} not reached within {timeout} s")


class _Hooks:
    """aiosmtpd's handler hooks, routed to the session they belong to."""

    def __init__(self, smtp: _RelaySMTP) -> None:
        self._smtp = smtp

    async def handle_exception(self, error: Exception) -> str:
        # A client giving up on the TLS handshake is a counted event here, not a crash.
        if not isinstance(error, TLSSetupException):
            _log.exception("stand-in session %d failed", self._smtp.session_id)
        return f"500 Error: ({type(error).__name__}) {error}"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, lines: list[str]
    ) -> list[str]:
        return self._smtp.ehlo_lines(hostname, lines)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return self._smtp.accept_mail(address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self._smtp.end_of_data()


class _QuietSession(Session):
    """aiosmtpd sets its own deprecated ``login_data`` after every AUTH, logging a warning each
    time; benchmarks authenticate thousands of times."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _RelaySMTP(SMTP):
    """One client connection, with the configuration current when it was opened."""

    # The usual prompts (aiosmtpd's own are "User Name\0" and "Password\0"); smtplib's LOGIN
    # client looks for "Username:".
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self, state: _State, tls_context: ssl.SSLContext, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._state = state
        self._cfg = state.config
        self.session_id = state.next_session_id()
        self._ip = ""
        self._started_at = 0.0
        self._refusal: str | None = None
        self._open = False
        self._tls_version: str | None = None
        self._auth_user: str | None = None
        # (user, accepted) from the credential check of the AUTH command being handled.
        self._auth_check: tuple[str, bool] | None = None
        # Set from an accepted MAIL FROM to the end of that transaction.
        self._mail_from_at: float | None = None
        self._data_outcome: str | None = None
        super().__init__(
            _Hooks(self),
            hostname=self._cfg.hostname,
            ident="ESMTP",
            data_size_limit=self._cfg.size_limit or None,
            tls_context=tls_context if self._cfg.offer_starttls else None,
            auth_require_tls=not self._cfg.auth_over_plaintext,
            authenticator=self._check_credentials,
            loop=loop,
        )

    # --- connection lifecycle -------------------------------------------------------------

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this twice: for the TCP connection and after a STARTTLS handshake.
        upgrading = self._original_transport is not None
        super().connection_made(transport)
        if upgrading:
            ssl_object = transport.get_extra_info("ssl_object")
            self._tls_version = ssl_object.version()
            self._emit("tls", version=self._tls_version, cipher=ssl_object.cipher()[0])
            return
        self._state.live.add(self)
        peer = transport.get_extra_info("peername")
        self._ip = _client_ip(peer[0])
        self._started_at = time.time()
        self._refusal = self._state.admit(self.session_id, self._ip, peer[1], self._cfg)
        self._open = self._refusal is None

    def connection_lost(self, error: Exception | None) -> None:
        self._end_delivery("lost")
        if self._open:
            self._open = False
            self._emit("session_close", duration=time.time() - self._started_at)
        self._state.live.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refusal is None:
            await super()._handle_client()
            return
        await self.push(self._refusal)
        if self.transport is not None:
            self.transport.close()

    def drop(self) -> None:
        """Cut the connection like a crash: no reply, no TLS close_notify."""
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        transport = self._original_transport or self.transport
        # Not isinstance(asyncio.Transport): uvloop's transports do not derive from it.
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()
        self._close_if_lost_in_handshake()

    def _close_if_lost_in_handshake(self) -> None:
        # When this side aborts the link mid-handshake (drop, or aiosmtpd's idle timeout),
        # asyncio resolves the handshake without an error and never reports the loss to this
        # protocol, so the session would stay open forever.
        if self._open and self._tls_protocol is not None and self._tls_version is None:
            self._emit("tls_failed")
            self.connection_lost(None)

    async def push(self, status: AnyStr) -> None:
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        if text[:1] in ("4", "5"):
            self._emit("error_reply", code=text[:3], reply=text)
        await super().push(status)

    # --- TLS and AUTH ---------------------------------------------------------------------

    async def smtp_STARTTLS(self, arg: str) -> None:
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException:
            self._emit("tls_failed")
            raise
        self._close_if_lost_in_handshake()

    async def smtp_AUTH(self, arg: str) -> None:
        mechanism = arg.split()[0].upper() if arg else ""
        over_tls = self._tls_protocol is not None
        self._auth_check = None
        try:
            if self._cfg.auth_mode == "ip":
                await self.push("503 5.5.1 Error: authentication not enabled")
                return
            await super().smtp_AUTH(arg)
        finally:
            check = self._auth_check
            self._emit(
                "auth",
                mechanism=mechanism,
                tls=over_tls,
                user=check[0] if check else None,
                result="rejected" if check is None else "ok" if check[1] else "invalid",
            )

    def _check_credentials(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user = data.login.decode("utf-8", "replace")
        expected = self._cfg.users.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode(), data.password)
        self._auth_check = (user, ok)
        if ok:
            self._auth_user = user
        # A failure without a message makes aiosmtpd answer 535 5.7.8.
        return AuthResult(success=ok, handled=False)

    def ehlo_lines(self, hostname: str, lines: list[str]) -> list[str]:
        # With a hook, aiosmtpd leaves recording the client's name to us.
        assert self.session is not None
        self.session.host_name = hostname
        if self._cfg.auth_mode == "ip":
            lines = [line for line in lines if not line.startswith("250-AUTH")]
        if self._cfg.pipelining:
            # aiosmtpd reads one command at a time from its stream, so pipelined commands
            # are answered in order; it just does not announce the extension.
            lines = [*lines[:-1], "250-PIPELINING", lines[-1]]
        return lines

    # --- mail transaction -----------------------------------------------------------------

    def accept_mail(self, address: str, options: list[str]) -> str:
        refusal = self._mail_refusal()
        if refusal is not None:
            return refusal
        assert self.envelope is not None
        self.envelope.mail_from = address
        self.envelope.mail_options.extend(options)
        self._mail_from_at = time.time()
        self._emit("delivery_start", mail_from=address)
        return "250 2.1.0 Ok"

    def _mail_refusal(self) -> str | None:
        mode = self._cfg.auth_mode
        listed = _listed(self._ip, self._cfg.allowed_ips)
        if mode in IP_REQUIRED_MODES and not listed:
            return "550 5.7.1 Client host rejected: not in acceptable network"
        if mode == "ip" or (mode == "ip_or_sasl" and listed) or self._auth_user is not None:
            return None
        return "530 5.7.0 Authentication required"

    async def smtp_DATA(self, arg: str) -> None:
        assert self.envelope is not None
        if self.envelope.rcpt_tos and not arg and self._state.take_fault("drop_in_data_messages"):
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            # Take the first line so the drop lands while the message is being sent.
            await self._reader.readline()
            self._end_delivery("dropped")
            self.drop()
            return
        await super().smtp_DATA(arg)

    async def end_of_data(self) -> str:
        assert self.envelope is not None and self.envelope.mail_from is not None
        assert self._mail_from_at is not None
        received_at = time.time()
        counts = self._state.counts(self._ip)
        if self._state.take_fault("data_451_messages"):
            self._data_outcome = "451"
            return "451 4.3.0 Temporary failure, try again later (injected fault)"
        data = self.envelope.original_content
        assert data is not None
        message_id = email.parser.BytesHeaderParser().parsebytes(data).get("Message-ID")
        body_sha256 = hashlib.sha256(data.partition(b"\r\n\r\n")[2]).hexdigest()
        # The interval runs from the final dot, so this bookkeeping is part of it.
        await self._state.hold_until(received_at + self._cfg.receive_interval_ms / 1000)
        self._state.add_message(
            MessageRecord(
                session=self.session_id,
                client_ip=self._ip,
                auth_user=self._auth_user,
                tls=self._tls_version is not None,
                tls_version=self._tls_version,
                mail_from=self.envelope.mail_from,
                rcpt_tos=tuple(self.envelope.rcpt_tos),
                message_id=str(message_id).strip() if message_id is not None else None,
                body_sha256=body_sha256,
                size=len(data),
                data=data if self._cfg.record_data else None,
                session_started_at=self._started_at,
                mail_from_at=self._mail_from_at,
                received_at=received_at,
                accepted_at=time.time(),
                sessions_open=counts["sessions_open"],
                sessions_open_from_ip=counts["sessions_open_from_ip"],
                deliveries_in_progress=counts["deliveries_in_progress"],
                deliveries_in_progress_from_ip=counts["deliveries_in_progress_from_ip"],
            )
        )
        self._data_outcome = "accepted"
        return "250 2.0.0 Ok: queued"

    def _set_post_data_state(self) -> None:
        # aiosmtpd calls this when DATA ends, whatever the reply, and on RSET/HELO/EHLO.
        self._end_delivery(self._data_outcome or "rejected")
        self._data_outcome = None
        super()._set_post_data_state()

    def _set_rset_state(self) -> None:
        self._end_delivery("reset")
        super()._set_rset_state()

    def _end_delivery(self, outcome: str) -> None:
        if self._mail_from_at is None:
            return
        self._mail_from_at = None
        self._emit("delivery_end", outcome=outcome)

    def _emit(self, kind: str, **fields: Any) -> None:
        self._state.emit(kind, session=self.session_id, ip=self._ip, **fields)


def _client_ip(host: str) -> str:
    # A dual-stack "::" listener sees IPv4 clients as ::ffff:a.b.c.d.
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _listed(ip: str, allowed: tuple[str, ...]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address == ipaddress.ip_address(a) for a in allowed)


class StandIn:
    """A stand-in for the service's relay port, listening as soon as it is constructed.

    Its asyncio loop runs in a background thread; every method is safe from any thread. With
    ``events_path``, every event is also written there as one JSON line (the file is truncated
    first; see ``records`` for the schema)::

        with StandIn(StandInConfig(users={"api-user": "api-key"})) as standin:
            ...  # connect to standin.port, trust standin.ca_path
            record = standin.wait_for_messages(1)[0]
    """

    ca_path: Path
    """The test CA's certificate (PEM): what a client uses as ``smtp_tls_CAfile``."""
    port: int
    """The port every host listens on (the one picked when ``config.port`` is 0)."""

    def __init__(
        self, config: StandInConfig | None = None, *, events_path: str | Path | None = None
    ) -> None:
        config = config or StandInConfig()
        self._cleanup = contextlib.ExitStack()
        self._servers: list[asyncio.Server] = []
        self._stopped = False
        try:
            if config.tls_dir is None:
                tls_dir = Path(self._cleanup.enter_context(tempfile.TemporaryDirectory()))
            else:
                tls_dir = Path(config.tls_dir)
                tls_dir.mkdir(parents=True, exist_ok=True)
            self.ca_path = tls_dir / tls.CA_CERT_FILE
            self._tls_context = tls.server_context(tls_dir, config.tls_names())
            events = None
            if events_path is not None:
                events = self._cleanup.enter_context(
                    open(events_path, "w", encoding="utf-8")  # noqa: SIM115 (ExitStack closes it)
                )
            self._state = _State(config, events)
            self._loop = _new_event_loop()
            self._cleanup.callback(self._loop.close)
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="standin", daemon=True
            )
            self._thread.start()
            self._cleanup.callback(self._stop_loop)
            # Before the loop stops: waiting timers then wake and report to a live loop.
            self._cleanup.callback(self._state.stop_timers)
            self.port = config.port
            self._call(self._listen())
        except BaseException:
            self._cleanup.close()
            raise
        self._state.emit(
            "listening", hosts=list(config.hosts), port=self.port, ca_path=str(self.ca_path)
        )

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def config(self) -> StandInConfig:
        """The configuration new sessions get."""
        return self._state.config

    def stop(self) -> None:
        """Drop every session, stop listening and release the thread; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._call(self._shutdown())
            self._state.emit("stopped")
        finally:
            self._cleanup.close()

    def down(self) -> None:
        """Act like a crashed server: stop listening and drop open sessions (no-op if down)."""
        if self._servers:
            self._call(self._go_down())
            self._state.emit("down")

    def up(self) -> None:
        """Listen again on the same port (no-op if up)."""
        if not self._servers:
            self._call(self._listen())
            self._state.emit("up")

    def reconfigure(self, **changes: Any) -> StandInConfig:
        """Change behaviour for sessions opened from now on; a fault count re-arms that fault.

        hosts, port, cert_names and tls_dir are fixed once listening.
        """
        return self._state.reconfigure(changes)

    def messages(self) -> list[MessageRecord]:
        """Every accepted message so far, in order of acceptance."""
        return self._state.messages()

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        return self._state.stats()

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[MessageRecord]:
        """Block until ``count`` messages were accepted; all messages, or TimeoutError."""
        self._state.wait(lambda: len(self._state.messages()) >= count, timeout, f"{count} messages")
        return self._state.messages()

    def wait_for_stats(self, ready: Callable[[Stats], bool], timeout: float = 10.0) -> Stats:
        """Block until ``ready(stats)`` holds, e.g. every session closed after QUIT."""
        self._state.wait(lambda: ready(self._state.stats()), timeout, "stats condition")
        return self._state.stats()

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context trusting only this stand-in's CA."""
        return tls.client_context(self.ca_path)

    # --- on the loop thread ---------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_LOOP_CALL_TIMEOUT_S)

    async def _listen(self) -> None:
        port = self.port
        try:
            for host in self.config.hosts:
                server = await self._loop.create_server(
                    lambda: _RelaySMTP(self._state, self._tls_context, self._loop),
                    host=host,
                    port=port,
                )
                self._servers.append(server)
                # Port 0 on the first host picks the port; the other hosts share it.
                port = server.sockets[0].getsockname()[1]
        except BaseException:
            await self._go_down()
            raise
        self.port = port

    async def _go_down(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self._state.live):
            session.drop()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        # connection_lost() follows abort() by a loop iteration or two.
        deadline = self._loop.time() + 1.0
        while self._state.live and self._loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def _shutdown(self) -> None:
        await self._go_down()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_LOOP_CALL_TIMEOUT_S)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    # uvloop (the bench extra) where installed: a cheaper loop.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
