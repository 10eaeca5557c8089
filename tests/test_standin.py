"""The stand-in for the service's relay port behaves as the service does, and counts truthfully.

Clients are smtplib (or a raw socket) on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simworld.netns_rig import wait_until
from simworld.standin import (
    StandIn,
    StandInConfig,
    messages_from_events,
    read_events,
    stats_from_events,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
USER, KEY = "api-user", "api-key"
USERS = {USER: KEY}

MakeStandIn = Callable[..., StandIn]


@pytest.fixture
def make_standin() -> Iterator[MakeStandIn]:
    started: list[StandIn] = []

    def make(events_path: Path | None = None, **config: Any) -> StandIn:
        config.setdefault("users", USERS)
        standin = StandIn(StandInConfig(**config), events_path=events_path)
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


def message(number: int = 1, body: bytes = b"Hello from the relay.\r\n") -> bytes:
    return (
        f"Message-ID: <{number}@relay.test>\r\nFrom: a@relay.test\r\nTo: b@dest.test\r\n"
        f"Subject: test {number}\r\n\r\n"
    ).encode() + body


def connect(standin: StandIn) -> smtplib.SMTP:
    client = smtplib.SMTP(LOOPBACK, standin.port, timeout=5)
    client.ehlo()
    return client


def connect_tls(standin: StandIn) -> smtplib.SMTP:
    client = connect(standin)
    client.starttls(context=standin.client_context())
    client.ehlo()
    return client


def authenticate(
    client: smtplib.SMTP, mechanism: str, initial_response: bool = True, key: str = KEY
) -> int:
    """One AUTH command with the named mechanism (``login()`` tries each in turn)."""
    client.user, client.password = USER, key
    method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    code, _ = client.auth(mechanism, method, initial_response_ok=initial_response)
    return code


def send(client: smtplib.SMTP, number: int = 1) -> None:
    client.sendmail("a@relay.test", ["b@dest.test"], message(number))


def deliver(standin: StandIn, number: int = 1, key: str = KEY) -> None:
    """One message the way the guide's Postfix sends it: STARTTLS, AUTH, mail, QUIT."""
    with connect_tls(standin) as client:
        client.login(USER, key)
        send(client, number)


def all_closed(standin: StandIn) -> None:
    standin.wait_for_stats(lambda s: s.sessions_open == 0, 5)


# --- TLS and AUTH ------------------------------------------------------------------------


def test_starttls_and_auth_plain_deliver_a_recorded_message(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with connect_tls(standin) as client:
        assert authenticate(client, "PLAIN") == 235
        send(client, 7)

    [record] = standin.wait_for_messages(1)
    assert record.message_id == "<7@relay.test>"
    assert record.body_sha256 == hashlib.sha256(b"Hello from the relay.\r\n").hexdigest()
    assert record.data == message(7)
    assert record.size == len(message(7))
    assert (record.tls, record.auth_user, record.client_ip) == (True, USER, LOOPBACK)
    assert record.tls_version is not None and record.tls_version.startswith("TLSv1.")
    assert (record.mail_from, record.rcpt_tos) == ("a@relay.test", ("b@dest.test",))
    assert (record.sessions_open, record.sessions_open_from_ip) == (1, 1)
    assert (record.deliveries_in_progress, record.deliveries_in_progress_from_ip) == (1, 1)
    assert (
        record.session_started_at <= record.mail_from_at <= record.received_at <= record.accepted_at
    )
    all_closed(standin)
    stats = standin.stats()
    assert (stats.tls_handshakes, stats.auth_ok, stats.auth_plaintext) == (1, 1, 0)
    assert (stats.messages_accepted, stats.sessions_total) == (1, 1)
    assert stats.delivery_outcomes == {"accepted": 1}


@pytest.mark.parametrize("initial_response", [True, False])
def test_auth_login_succeeds(make_standin: MakeStandIn, initial_response: bool) -> None:
    standin = make_standin()
    with connect_tls(standin) as client:
        assert authenticate(client, "LOGIN", initial_response) == 235
        send(client)
    assert standin.wait_for_messages(1)[0].auth_user == USER
    assert standin.stats().auth_ok == 1


def test_wrong_key_gets_535(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with connect_tls(standin) as client, pytest.raises(smtplib.SMTPAuthenticationError) as err:
        authenticate(client, "PLAIN", key="not-the-key")
    assert err.value.smtp_code == 535
    assert err.value.smtp_error == b"5.7.8 Authentication credentials invalid"
    stats = standin.stats()
    assert (stats.auth_attempts, stats.auth_ok, stats.auth_failed) == (1, 0, 1)
    assert stats.error_replies == {"535": 1}


def test_unknown_user_gets_535(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with connect_tls(standin) as client, pytest.raises(smtplib.SMTPAuthenticationError) as err:
        client.user, client.password = "someone-else", KEY
        client.auth("LOGIN", client.auth_login, initial_response_ok=False)
    assert err.value.smtp_code == 535
    assert standin.stats().auth_failed == 1


def test_mail_without_auth_gets_530(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with connect_tls(standin) as client:
        assert client.mail("a@relay.test") == (530, b"5.7.0 Authentication required")
    assert standin.stats().deliveries_in_progress == 0
    assert standin.messages() == []


def test_auth_is_offered_only_after_starttls(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with connect(standin) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        # A client that sends credentials anyway is counted: they crossed the wire in clear.
        plain = base64.b64encode(f"\0{USER}\0{KEY}".encode()).decode()
        code, _ = client.docmd("AUTH", f"PLAIN {plain}")
        assert code == 538
        client.starttls(context=standin.client_context())
        client.ehlo()
        assert client.has_extn("auth")
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    stats = standin.stats()
    assert (stats.auth_attempts, stats.auth_plaintext, stats.auth_ok) == (1, 1, 0)


def test_stripped_starttls_with_plaintext_auth_counts_cleartext_credentials(
    make_standin: MakeStandIn,
) -> None:
    standin = make_standin(offer_starttls=False, auth_over_plaintext=True)
    with connect(standin) as client:
        assert not client.has_extn("starttls")
        assert client.has_extn("auth")
        assert client.docmd("STARTTLS")[0] == 454
        client.login(USER, KEY)
        send(client)
    [record] = standin.wait_for_messages(1)
    assert (record.tls, record.tls_version, record.auth_user) == (False, None, USER)
    stats = standin.stats()
    assert (stats.auth_plaintext, stats.auth_ok, stats.tls_handshakes) == (1, 1, 0)


def test_stripped_starttls_without_plaintext_auth_offers_nothing(
    make_standin: MakeStandIn,
) -> None:
    standin = make_standin(offer_starttls=False)
    with connect(standin) as client:
        assert not client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.mail("a@relay.test")[0] == 530


def test_aborted_tls_handshake_is_counted_and_closes_the_session(
    make_standin: MakeStandIn,
) -> None:
    standin = make_standin()
    # Both must close: the socket stays open while its file object does.
    with (
        socket.create_connection((LOOPBACK, standin.port), timeout=5) as raw,
        raw.makefile("rb") as reader,
    ):
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 ")
    stats = standin.wait_for_stats(lambda s: s.sessions_open == 0, 5)
    assert (stats.tls_failures, stats.tls_handshakes) == (1, 0)


# --- IP authentication (G8) --------------------------------------------------------------


def test_ip_mode_accepts_a_listed_client_without_auth(make_standin: MakeStandIn) -> None:
    standin = make_standin(auth_mode="ip", allowed_ips=(LOOPBACK,))
    with connect_tls(standin) as client:
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN")[0] == 503
        send(client)
    [record] = standin.wait_for_messages(1)
    assert (record.auth_user, record.tls) == (None, True)
    assert standin.stats().auth_attempts == 1


def test_ip_mode_refuses_an_unlisted_client_at_connect(make_standin: MakeStandIn) -> None:
    standin = make_standin(auth_mode="ip", allowed_ips=("192.0.2.10",))
    with pytest.raises(smtplib.SMTPConnectError) as err:
        connect(standin)
    assert err.value.smtp_code == 554
    stats = standin.stats()
    assert stats.refused_by_reason == {"ip_not_allowed": 1}
    assert (stats.peak_sessions, stats.sessions_total) == (0, 1)


def test_ip_mode_can_refuse_an_unlisted_client_at_mail(make_standin: MakeStandIn) -> None:
    standin = make_standin(auth_mode="ip", allowed_ips=("192.0.2.10",), ip_reject_at="mail")
    with connect_tls(standin) as client:
        assert client.mail("a@relay.test")[0] == 550


@pytest.mark.parametrize(
    ("mode", "allowed", "login", "expected"),
    [
        ("ip_or_sasl", (LOOPBACK,), False, 250),
        ("ip_or_sasl", ("192.0.2.10",), False, 530),
        ("ip_or_sasl", ("192.0.2.10",), True, 250),
        ("ip_and_sasl", (LOOPBACK,), False, 530),
        ("ip_and_sasl", (LOOPBACK,), True, 250),
    ],
)
def test_combined_modes_decide_at_mail(
    make_standin: MakeStandIn, mode: str, allowed: tuple[str, ...], login: bool, expected: int
) -> None:
    standin = make_standin(auth_mode=mode, allowed_ips=allowed, ip_reject_at="mail")
    with connect_tls(standin) as client:
        assert client.has_extn("auth")
        if login:
            client.login(USER, KEY)
        assert client.mail("a@relay.test")[0] == expected


def test_ip_and_sasl_refuses_an_unlisted_client_even_with_auth(make_standin: MakeStandIn) -> None:
    standin = make_standin(
        auth_mode="ip_and_sasl", allowed_ips=("192.0.2.10",), ip_reject_at="mail"
    )
    with connect_tls(standin) as client:
        client.login(USER, KEY)
        assert client.mail("a@relay.test")[0] == 550


# --- the console's limits (G9, receiving interval, size) ---------------------------------


def test_session_cap_refuses_one_more_with_421_and_counts_it(make_standin: MakeStandIn) -> None:
    standin = make_standin(max_sessions_per_ip=3)
    clients = [connect(standin) for _ in range(3)]
    with pytest.raises(smtplib.SMTPConnectError) as err:
        connect(standin)
    assert (err.value.smtp_code, err.value.smtp_error) == (421, b"4.7.0 Too many connections")
    stats = standin.stats()
    assert (stats.refused_sessions, stats.refused_by_reason) == (1, {"too_many": 1})
    assert (stats.peak_sessions, stats.peak_sessions_by_ip, stats.sessions_total) == (
        3,
        {LOOPBACK: 3},
        4,
    )

    clients.pop().quit()
    standin.wait_for_stats(lambda s: s.sessions_open == 2, 5)
    clients.append(connect(standin))
    for client in clients:
        client.quit()
    assert standin.stats().refused_sessions == 1


def test_receiving_interval_holds_each_message_without_serialising_sessions(
    make_standin: MakeStandIn,
) -> None:
    standin = make_standin(receive_interval_ms=300)
    errors: list[BaseException] = []

    def one(number: int) -> None:
        try:
            deliver(standin, number)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert errors == []
    records = standin.wait_for_messages(4)
    assert all(r.accepted_at - r.received_at >= 0.29 for r in records)
    # The interval of one session does not block the others: their waits overlap in time.
    spans = sorted((r.received_at, r.accepted_at) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    stats = standin.stats()
    assert stats.peak_deliveries == 4
    assert stats.peak_deliveries_by_ip == {LOOPBACK: 4}
    assert stats.deliveries_in_progress == 0


def test_stopping_ends_a_receiving_interval_in_progress(make_standin: MakeStandIn) -> None:
    standin = make_standin(receive_interval_ms=10_000)
    client = connect_tls(standin)
    client.login(USER, KEY)
    client.mail("a@relay.test")
    client.rcpt("b@dest.test")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(message() + b"\r\n.\r\n")
    timers = wait_until(
        lambda: [t for t in threading.enumerate() if t.name.startswith("standin-interval")],
        5,
        "the message's receiving interval being timed",
        0.01,
    )

    standin.stop()

    for timer in timers:
        timer.join(5)
    assert [t.name for t in timers if t.is_alive()] == []
    assert standin.messages() == []
    client.close()


# --- PIPELINING ---------------------------------------------------------------------------


def test_pipelined_commands_are_announced_and_answered_in_order(
    make_standin: MakeStandIn,
) -> None:
    standin = make_standin()
    with connect_tls(standin) as client:
        assert client.has_extn("pipelining")
        client.login(USER, KEY)
        # MAIL, RCPT and DATA in one write, as Postfix sends them to a PIPELINING server.
        client.send(b"MAIL FROM:<a@relay.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n")
        assert [client.getreply()[0] for _ in range(3)] == [250, 250, 354]
        client.send(message() + b"\r\n.\r\n")
        assert client.getreply()[0] == 250
    (record,) = standin.wait_for_messages(1)
    assert (record.mail_from, record.rcpt_tos) == ("a@relay.test", ("b@dest.test",))


def test_pipelining_can_be_withheld(make_standin: MakeStandIn) -> None:
    standin = make_standin(pipelining=False)
    with connect_tls(standin) as client:
        assert client.has_extn("auth")
        assert not client.has_extn("pipelining")


def test_size_limit_is_advertised_and_enforced_with_552(make_standin: MakeStandIn) -> None:
    standin = make_standin(size_limit=1000)
    with connect_tls(standin) as client:
        client.login(USER, KEY)
        assert client.esmtp_features["size"] == "1000"
        assert client.mail("a@relay.test", ["SIZE=2000"])[0] == 552
        assert client.mail("a@relay.test")[0] == 250
        assert client.rcpt("b@dest.test")[0] == 250
        assert client.data(message(body=b"x" * 70 + b"\r\n") * 20)[0] == 552
        send(client)
    assert len(standin.wait_for_messages(1)) == 1
    stats = standin.stats()
    assert stats.error_replies == {"552": 2}
    assert stats.delivery_outcomes == {"rejected": 1, "accepted": 1}


def test_sessions_and_deliveries_are_counted_apart(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with connect_tls(standin) as idle, connect_tls(standin) as busy:
        idle.login(USER, KEY)
        busy.login(USER, KEY)
        send(busy, 1)
        assert busy.mail("a@relay.test")[0] == 250
        assert standin.stats().deliveries_in_progress == 1
        busy.rset()
        send(busy, 2)
    records = standin.wait_for_messages(2)
    assert [(r.sessions_open, r.deliveries_in_progress) for r in records] == [(2, 1), (2, 1)]
    stats = standin.wait_for_stats(lambda s: s.sessions_open == 0, 5)
    assert (stats.peak_sessions, stats.peak_deliveries) == (2, 1)
    assert stats.delivery_outcomes == {"accepted": 2, "reset": 1}


# --- injected faults ---------------------------------------------------------------------


def test_first_sessions_get_a_421_greeting(make_standin: MakeStandIn) -> None:
    standin = make_standin(greeting_421_sessions=2)
    for _ in range(2):
        with pytest.raises(smtplib.SMTPConnectError) as err:
            connect(standin)
        assert err.value.smtp_code == 421
    deliver(standin)
    assert len(standin.wait_for_messages(1)) == 1
    assert standin.stats().refused_by_reason == {"fault_421": 2}


def test_first_messages_get_451_at_end_of_data(make_standin: MakeStandIn) -> None:
    standin = make_standin(data_451_messages=1)
    with pytest.raises(smtplib.SMTPDataError) as err:
        deliver(standin, 1)
    assert err.value.smtp_code == 451
    deliver(standin, 2)
    [record] = standin.wait_for_messages(1)
    assert record.message_id == "<2@relay.test>"
    assert standin.stats().delivery_outcomes == {"451": 1, "accepted": 1}


def test_first_messages_lose_the_connection_mid_data(make_standin: MakeStandIn) -> None:
    standin = make_standin(drop_in_data_messages=1)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        deliver(standin, 1)
    stats = standin.wait_for_stats(lambda s: s.sessions_open == 0, 5)
    assert stats.delivery_outcomes == {"dropped": 1}
    assert standin.messages() == []
    deliver(standin, 2)
    assert len(standin.wait_for_messages(1)) == 1


def test_down_drops_sessions_and_refuses_connections_until_up(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    client = connect_tls(standin)
    standin.down()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, standin.port), timeout=5).close()
    assert standin.stats().sessions_open == 0

    standin.up()
    deliver(standin)
    assert len(standin.wait_for_messages(1)) == 1


def test_down_during_a_tls_handshake_still_closes_the_session(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with (
        socket.create_connection((LOOPBACK, standin.port), timeout=5) as raw,
        raw.makefile("rb") as reader,
    ):
        reader.readline()
        raw.sendall(b"STARTTLS\r\n")
        reader.readline()
        standin.down()
        stats = standin.wait_for_stats(lambda s: s.sessions_open == 0, 5)
    assert stats.tls_failures == 1


# --- runtime reconfiguration -------------------------------------------------------------


def test_reconfigure_fixes_the_key_for_new_sessions(make_standin: MakeStandIn) -> None:
    standin = make_standin(users={USER: "old-key"})
    with pytest.raises(smtplib.SMTPAuthenticationError):
        deliver(standin)
    standin.reconfigure(users={USER: KEY})
    deliver(standin)
    assert standin.wait_for_messages(1)[0].auth_user == USER


def test_reconfigure_restores_starttls(make_standin: MakeStandIn) -> None:
    standin = make_standin(offer_starttls=False)
    with connect(standin) as client:
        assert not client.has_extn("starttls")
    standin.reconfigure(offer_starttls=True)
    deliver(standin)
    assert standin.wait_for_messages(1)[0].tls


def test_reconfigure_rearms_a_fault_and_refuses_fixed_fields(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    deliver(standin, 1)
    standin.reconfigure(data_451_messages=1)
    with pytest.raises(smtplib.SMTPDataError):
        deliver(standin, 2)
    deliver(standin, 3)
    assert [r.message_id for r in standin.wait_for_messages(2)] == [
        "<1@relay.test>",
        "<3@relay.test>",
    ]
    with pytest.raises(ValueError, match="port"):
        standin.reconfigure(port=10025)
    assert standin.config.data_451_messages == 1


# --- configuration, certificates, events -------------------------------------------------


def test_config_rejects_what_the_service_cannot_do() -> None:
    with pytest.raises(ValueError, match="auth_mode"):
        StandInConfig(auth_mode="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no CIDR"):
        StandInConfig(allowed_ips=("192.0.2.0/24",))
    with pytest.raises(ValueError, match="hosts"):
        StandInConfig(hosts=("localhost",))
    with pytest.raises(ValueError, match="unknown"):
        StandInConfig.from_dict({"max_sessions": 5})
    config = StandInConfig(allowed_ips=("192.0.2.1",), users={"u": "k"})
    assert StandInConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_certificate_is_valid_for_the_service_host_name(make_standin: MakeStandIn) -> None:
    standin = make_standin()
    with (
        socket.create_connection((LOOPBACK, standin.port), timeout=5) as raw,
        raw.makefile("rb") as reader,
    ):
        assert reader.readline() == b"220 sandbox.smtps.jp ESMTP\r\n"
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 ")
        context = standin.client_context()
        with context.wrap_socket(raw, server_hostname="sandbox.smtps.jp") as tls_socket:
            assert tls_socket.version() is not None
    assert standin.wait_for_stats(lambda s: s.sessions_open == 0, 5).tls_handshakes == 1


def test_record_data_off_keeps_the_hash_but_not_the_bytes(make_standin: MakeStandIn) -> None:
    standin = make_standin(record_data=False)
    deliver(standin)
    [record] = standin.wait_for_messages(1)
    assert record.data is None
    assert record.body_sha256 == hashlib.sha256(b"Hello from the relay.\r\n").hexdigest()


def test_a_tls_dir_keeps_the_ca_across_restarts(make_standin: MakeStandIn, tmp_path: Path) -> None:
    first = make_standin(tls_dir=str(tmp_path))
    ca = first.ca_path.read_bytes()
    first.stop()
    second = make_standin(tls_dir=str(tmp_path), cert_names=("sandbox.smtps.jp", LOOPBACK))
    assert second.ca_path.read_bytes() == ca
    deliver(second)  # verified against the first run's CA file
    assert second.wait_for_messages(1)[0].tls


def test_event_file_replays_to_the_same_stats_and_records(
    make_standin: MakeStandIn, tmp_path: Path
) -> None:
    events_path = tmp_path / "events.jsonl"
    standin = make_standin(events_path=events_path, data_451_messages=1)
    with pytest.raises(smtplib.SMTPDataError):
        deliver(standin, 1)
    deliver(standin, 2)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        deliver(standin, 3, key="wrong")
    all_closed(standin)
    live_stats, live_messages = standin.stats(), standin.messages()
    standin.stop()

    events = read_events(events_path)
    assert stats_from_events(events) == live_stats
    assert messages_from_events(events) == live_messages
    kinds = [e["event"] for e in events]
    assert (kinds[0], kinds[-1]) == ("listening", "stopped")
    opened = next(e for e in events if e["event"] == "session_open")
    assert (opened["sessions_open"], opened["sessions_open_from_ip"]) == (1, 1)

    with events_path.open("a") as torn:
        torn.write('{"event": "sess')
    assert read_events(events_path) == events


# --- as a separate process -----------------------------------------------------------------


def test_process_form_serves_reports_and_stops_on_sigterm(tmp_path: Path) -> None:
    config_path, events_path = tmp_path / "config.json", tmp_path / "events.jsonl"
    config = StandInConfig(users={USER: "old-key"}, receive_interval_ms=10)
    config_path.write_text(json.dumps(config.to_dict()))
    command = [sys.executable, "-m", "simworld.standin", "--control-stdin"]
    command += ["--config", str(config_path), "--events", str(events_path)]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,  # only PYTHONPATH locates the package
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        listening = proc.stdout.readline().split()
        assert listening[:2] == ["LISTENING", LOOPBACK]
        cafile = proc.stdout.readline().split()
        assert cafile[0] == "CAFILE"

        proc.stdin.write(json.dumps({"op": "reconfigure", "changes": {"users": USERS}}) + "\n")
        proc.stdin.write(json.dumps({"op": "reboot"}) + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "OK reconfigure"
        assert proc.stdout.readline().startswith("ERROR unknown op")

        with smtplib.SMTP(LOOPBACK, int(listening[2]), timeout=5) as client:
            client.starttls(context=ssl.create_default_context(cafile=cafile[1]))
            client.login(USER, KEY)
            send(client, 42)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()

    events = read_events(events_path)
    [record] = messages_from_events(events)
    assert (record.message_id, record.auth_user, record.tls) == ("<42@relay.test>", USER, True)
    stats = stats_from_events(events)
    assert (stats.sessions_total, stats.sessions_open, stats.auth_ok) == (1, 0, 1)
    assert events[-1]["event"] == "stopped"
