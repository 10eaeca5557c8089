"""The on-host metrics publisher's parts, on what the integration rig's real Postfix wrote.

tests/data/metrics/ was captured from one rig run (tls_level encrypt): 2 messages sent; 3
deferred while the stand-in was down, put on hold (``postqueue -j`` saved deferred, then on
hold), released into 4 armed 421 greetings and delivered; 1 deferred because STARTTLS was not
offered, then delivered; 1 deferred by a 535 to a wrong API key, then delivered; 1 bounced
for its size, whose bounce notice bounced too. The stand-in recorded 4 refused sessions.
maillog-secure: tls_level secure against a certificate for another name, 1 message deferred.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmc_relay.userdata.metrics import BY_KEY, DEFAULT_MONITORING, METRICS
from cmc_relay.userdata.render import SCRIPT_DIR, UNIT_DIR, script, write_files
from cmc_relay.userdata.settings import RelaySettings
from tests.host_scripts import load_script

DATA = Path(__file__).parent / "data" / "metrics"
README = Path(__file__).parents[1] / "README.md"
publisher = load_script("cmc-relay-metrics")
ARRIVAL = 1796434329  # every message in the captured queue arrived in this second


def maillog() -> list[str]:
    return (DATA / "maillog").read_text().splitlines()


def log_line(text: str) -> str:
    """The captured line containing ``text``."""
    [line] = [line for line in maillog() if text in line]
    return line


def test_the_publisher_computes_exactly_the_defined_metrics() -> None:
    assert set(BY_KEY) == publisher.KEYS
    gauges = publisher.queue_gauges("", 0)
    counts = publisher.log_counts([])
    assert gauges.keys() | counts.keys() | set(publisher.HOST_KEYS) == set(BY_KEY)
    assert {BY_KEY[k].kind for k in (*gauges, *publisher.HOST_KEYS)} == {"gauge"}
    assert {BY_KEY[k].kind for k in counts} == {"count"}


def test_the_rendered_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(DEFAULT_MONITORING.publisher_config()))
    assert publisher.load_config(str(path)) == DEFAULT_MONITORING.publisher_config()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"metrics": {"queue.bogus": {"name": "X", "unit": "Count"}}}, "queue.bogus"),
        ({"namespace": ""}, "KeyError: 'namespace'"),
    ],
)
def test_a_config_it_cannot_follow_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], error: str
) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**DEFAULT_MONITORING.publisher_config(), **change}))
    with pytest.raises(SystemExit) as exit_:
        publisher.load_config(str(path))
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err


def test_counts_in_the_captured_mail_log() -> None:
    assert publisher.log_counts(maillog()) == {
        "delivery.sent": 7,
        "delivery.deferred": 5,
        "delivery.bounced": 2,
        "delivery.sent_without_tls": 0,
        "delivery.sent_unverified_tls": 7,  # tls_level encrypt: every session "Trusted"
        "session.refused": 4,  # as many as the stand-in refused
        "session.tls_failed": 3,  # one message, tried at each of the 3 addresses
        "session.auth_failed": 3,  # likewise
    }


def test_an_unverified_certificate_is_tls_not_established() -> None:
    lines = (DATA / "maillog-secure").read_text().splitlines()
    counts = publisher.log_counts(lines)
    assert (counts["session.tls_failed"], counts["delivery.deferred"]) == (3, 1)  # 3 addresses
    assert sum(counts.values()) == 4


@pytest.mark.parametrize(
    ("text", "counted"),
    [
        # A session refused before another address is tried: its own line, no delivery.
        ("AE51420D12D: host sandbox.smtps.jp[203.0.113.11] refused", {"session.refused"}),
        ("2A13920D137: TLS is required, but was not offered by host sandbox.smtps.jp[203.0.113.11]",
         {"session.tls_failed"}),
        ("1AE5620D141: SASL authentication failed; server sandbox.smtps.jp[203.0.113.12]",
         {"session.auth_failed"}),
        # The last address's failure is only in the status line: a deferral and the failure.
        ("dsn=4.7.4, status=deferred (TLS", {"delivery.deferred", "session.tls_failed"}),
        ("dsn=4.7.8, status=deferred (SASL", {"delivery.deferred", "session.auth_failed"}),
        ("ABAA320D127: to=<user@example.com>, relay=none", {"delivery.deferred"}),
        ("dsn=5.3.4, status=bounced", {"delivery.bounced"}),
        # Sent, and no TLS session of its smtp process before it: in clear.
        ("2A13920D137: to=<user@example.com>, relay=sandbox.smtps.jp[203.0.113.11]:10025, delay",
         {"delivery.sent", "delivery.sent_without_tls"}),
        ("01:32:09 cmc-relay postfix/smtp[15518]: Trusted TLS", set()),
        ("01:32:09 cmc-relay postfix/tlsproxy[15527]: CONNECT to [203.0.113.11]", set()),
    ],
)  # fmt: skip
def test_each_line_counts_once_where_it_belongs(text: str, counted: set[str]) -> None:
    counts = publisher.log_counts([log_line(text)])
    assert {key for key, n in counts.items() if n} == counted
    assert set(counts.values()) <= {0, 1}


SESSION = "Dec 05 01:32:16 cmc-relay postfix/smtp[15677]: {} TLS connection {} to {}: TLSv1.3"
SENT = (
    "Dec 05 01:32:16 cmc-relay postfix/smtp[15677]: {}: to=<{}@example.com>, relay={}, "
    "delay=0.14, delays=0.13/0/0.01/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)"
)
SERVICE = "sandbox.smtps.jp[203.0.113.11]:10025"


@pytest.mark.parametrize(
    ("lines", "without_tls", "unverified"),
    [
        ([SESSION.format("Verified", "established", SERVICE), SENT.format("A1", "a", SERVICE),
          SENT.format("A1", "b", SERVICE)], 0, 0),  # two recipients, one session
        ([SESSION.format("Verified", "reused", SERVICE), SENT.format("A1", "a", SERVICE)], 0, 0),
        ([SESSION.format("Trusted", "established", SERVICE), SENT.format("A1", "a", SERVICE)],
         0, 1),
        ([SESSION.format("Untrusted", "reused", SERVICE), SENT.format("A1", "a", SERVICE)], 0, 1),
        # The process's next message came over a new session without TLS (none logged).
        ([SESSION.format("Verified", "established", SERVICE), SENT.format("A1", "a", SERVICE),
          SENT.format("B2", "a", SERVICE)], 1, 0),
        # TLS with one address, then the message went in clear to another.
        ([SESSION.format("Verified", "established", SERVICE),
          SENT.format("A1", "a", SERVICE.replace(".11]", ".12]"))], 1, 0),
    ],
)  # fmt: skip
def test_sent_without_tls_or_unverified_by_the_session_before(
    lines: list[str], without_tls: int, unverified: int
) -> None:
    counts = publisher.log_counts(lines)
    assert counts["delivery.sent_without_tls"] == without_tls
    assert counts["delivery.sent_unverified_tls"] == unverified


def test_lines_not_about_a_session_with_the_service_are_not_counted() -> None:
    # Postfix's formats (the rig's relay delivers nothing locally): local delivery, and the
    # queue manager repeating an earlier 421 while the destination is held back.
    lines = [
        "Dec 05 01:32:30 cmc-relay postfix/local[20001]: 3A1B20D160: to=<root@relay.example>, "
        "relay=local, delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (delivered to mailbox)",
        "Dec 05 01:32:30 cmc-relay postfix/error[20002]: 3A1B20D161: to=<user@example.com>, "
        "relay=none, delay=9, delays=9/0/0/0, dsn=4.3.2, status=deferred (delivery temporarily "
        "suspended: host sandbox.smtps.jp[203.0.113.11] refused to talk to me: 421 4.3.2 x)",
        "Dec 05 01:32:30 cmc-relay postfix/smtp[20003]: 3A1B20D162: to=<user@example.com>, "
        "relay=none, delay=9, delays=9/0/0/0, dsn=4.3.2, status=deferred (delivery temporarily "
        "suspended: host sandbox.smtps.jp[203.0.113.11] refused to talk to me: 421 4.3.2 x)",
    ]
    assert set(publisher.log_counts(lines).values()) == {0}


@pytest.mark.parametrize(
    ("reason", "key"),
    [
        # The service closing a session it had accepted, e.g. when shutting down.
        ("host sandbox.smtps.jp[203.0.113.12] said: 421 4.7.0 Try again later (in reply to "
         "MAIL FROM command)", "session.refused"),
        ("Cannot start TLS: handshake failure", "session.tls_failed"),
    ],
)  # fmt: skip
def test_failures_the_stand_in_cannot_make(reason: str, key: str) -> None:
    # Postfix's format: the stand-in answers 421 only as its greeting and completes every
    # TLS handshake it offers.
    line = (
        "Dec 05 01:32:31 cmc-relay postfix/smtp[20004]: 3A1B20D163: to=<user@example.com>, "
        "relay=sandbox.smtps.jp[203.0.113.12]:10025, delay=0.1, delays=0/0/0.05/0.05, dsn=4.7.0, "
        f"status=deferred ({reason})"
    )
    counts = publisher.log_counts([line])
    assert {k for k, n in counts.items() if n} == {"delivery.deferred", key}


def test_queue_gauges_from_postqueue() -> None:
    deferred = (DATA / "postqueue-deferred.jsonl").read_text()
    assert publisher.queue_gauges(deferred, ARRIVAL + 90) == {
        "queue.active": 0,
        "queue.deferred": 3,
        "queue.hold": 0,
        "queue.incoming": 0,
        "queue.oldest_age": 90,
    }
    held = publisher.queue_gauges((DATA / "postqueue-hold.jsonl").read_text(), ARRIVAL)
    assert (held["queue.hold"], held["queue.deferred"], held["queue.oldest_age"]) == (3, 0, 0)


def test_maildrop_counts_as_incoming_and_the_oldest_is_the_earliest() -> None:
    entries = [
        {"queue_name": "maildrop", "arrival_time": ARRIVAL + 50},
        {"queue_name": "incoming", "arrival_time": ARRIVAL + 40},
        {"queue_name": "active", "arrival_time": ARRIVAL},
    ]
    text = "".join(json.dumps(entry) + "\n" for entry in entries)
    gauges = publisher.queue_gauges(text, ARRIVAL + 60)
    assert (gauges["queue.incoming"], gauges["queue.active"]) == (2, 1)
    assert gauges["queue.oldest_age"] == 60


def test_the_empty_queue_has_no_age() -> None:
    assert set(publisher.queue_gauges("", ARRIVAL).values()) == {0}


@contextlib.contextmanager
def small_file_system(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (root only), as a queue's own volume would be."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_free_space_is_the_queue_s_own_file_system_s(tmp_path: Path) -> None:
    """Measured on the file system holding the path (not /): filling it is what it sees."""
    with small_file_system(tmp_path / "spool", "8m") as spool:
        (spool / "deferred").mkdir()
        assert publisher.free_percent(str(spool / "deferred")) == pytest.approx(100, abs=0.5)
        (spool / "filler").write_bytes(b"x" * (6 * 1024 * 1024))  # 6 of its 8 MiB
        assert publisher.free_percent(str(spool / "deferred")) == pytest.approx(25, abs=0.5)
        assert publisher.free_percent(str(tmp_path)) > 0  # another file system, not this one


def test_a_reboot_is_required_while_the_os_s_flag_exists(tmp_path: Path) -> None:
    flag = tmp_path / "reboot-required"
    assert publisher.reboot_required(str(flag)) == 0  # this machine has no dnf
    flag.write_text("*** System restart required ***\n")
    assert publisher.reboot_required(str(flag)) == 1


def test_each_line_is_read_once_and_a_partial_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    log.write_text("one\ntwo\nthr")
    lines, state = publisher.read_new_lines(str(log), None)  # no state: from the start
    assert lines == ["one", "two"]
    assert state == {"inode": os.stat(log).st_ino, "offset": len("one\ntwo\n")}
    with log.open("a") as f:
        f.write("ee\nfour\n")
    lines, state = publisher.read_new_lines(str(log), state)
    assert lines == ["three", "four"]
    assert publisher.read_new_lines(str(log), state) == ([], state)


def test_a_rotated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    log.write_text("old 1\nold 2\nold 3\n")
    _, state = publisher.read_new_lines(str(log), None)
    log.rename(tmp_path / "maillog.1")
    log.write_text("new 1\nnew 2\nnew 3\nnew 4\n")  # longer than the old offset: the inode says
    assert publisher.read_new_lines(str(log), state)[0] == ["new 1", "new 2", "new 3", "new 4"]


def test_a_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    log.write_text("old 1\nold 2\nold 3\n")
    _, state = publisher.read_new_lines(str(log), None)
    log.write_text("new 1\n")  # same inode, shorter than the offset
    assert publisher.read_new_lines(str(log), state)[0] == ["new 1"]


def test_the_state_is_saved_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "metrics-state.json"
    assert publisher.load_state(str(path)) is None
    publisher.save_state(str(path), {"inode": 7, "offset": 42})
    assert publisher.load_state(str(path)) == {"inode": 7, "offset": 42}
    assert os.listdir(path.parent) == ["metrics-state.json"]  # no temporary file left
    path.write_text("{")  # damaged: read the log from its start rather than fail
    assert publisher.load_state(str(path)) is None


def test_every_metric_is_one_datum_with_the_relay_and_instance() -> None:
    config = DEFAULT_MONITORING.publisher_config()
    values = {key: float(n) for n, key in enumerate(BY_KEY)}
    data = publisher.metric_data(config, values, "i-0123456789abcdef0", 1796434329.0)
    assert [(d["MetricName"], d["Unit"], d["Value"]) for d in data] == [
        (m.name, m.unit, values[m.key]) for m in METRICS
    ]
    dimensions = [{"Name": "Relay", "Value": "cmc-relay"}]
    dimensions.append({"Name": "InstanceId", "Value": "i-0123456789abcdef0"})
    assert all(d["Dimensions"] == dimensions for d in data)


def test_the_payload_installs_it_under_a_minute_timer() -> None:
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",))
    arn = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:smtp-AbCdEf"
    files = {f["path"]: f["content"] for f in write_files(settings, arn)}
    assert files[f"{SCRIPT_DIR}/cmc-relay-metrics"] == script("cmc-relay-metrics")
    service = files[f"{UNIT_DIR}/cmc-relay-metrics.service"]
    assert "ExecStart=/usr/local/sbin/cmc-relay-metrics\n" in service
    timer = files[f"{UNIT_DIR}/cmc-relay-metrics.timer"].splitlines()
    assert {"OnCalendar=*-*-* *:*:00", "AccuracySec=1s", "Persistent=true"} <= set(timer)
    setup = files[f"{SCRIPT_DIR}/cmc-relay-setup"]
    assert "systemctl enable --now cmc-relay-metrics.timer" in setup
    assert "systemctl start cmc-relay-metrics.service" in setup  # the first sample at once


def test_the_readme_lists_every_metric() -> None:
    readme = README.read_text()
    section = readme[readme.index("### Metrics") :]
    for m in METRICS:
        assert f"| `{m.name}` | {m.unit} |" in section, m.name
