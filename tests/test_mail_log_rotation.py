"""The payload's logrotate drop-in for the mail log, run by the real logrotate on a copy of it
that names a file of the test's (the drop-in's own path is the host's /var/log)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cmc_relay.userdata.render import LOGROTATE_CONFIG_PATH, MAIL_LOG, render_template
from cmc_relay.userdata.settings import RelaySettings

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
pytestmark = pytest.mark.skipif(not os.path.exists(LOGROTATE), reason="logrotate missing")


def test_rotation_keeps_the_file_postlogd_writes_to(tmp_path: Path) -> None:
    """copytruncate: the log Postfix has open stays the same file (same inode), emptied; the
    lines it held are in mail.log.1 (compressed only from the next rotation on)."""
    drop_in = render_template(LOGROTATE_CONFIG_PATH, RelaySettings(allowed_cidrs=("10.0.0.0/16",)))
    assert drop_in.count(MAIL_LOG) == 1
    log = tmp_path / "mail.log"
    log.write_text("Dec  5 01:00:00 relay postfix/smtp[1]: 4Q: status=sent\n")
    config = tmp_path / "cmc-relay"
    config.write_text(drop_in.replace(MAIL_LOG, str(log)))
    inode = log.stat().st_ino
    with log.open("a") as postlogd:  # held open across the rotation, as postlogd does
        subprocess.run(
            [LOGROTATE, "--force", "--state", str(tmp_path / "state"), str(config)], check=True
        )
        postlogd.write("Dec  5 01:00:01 relay postfix/smtp[1]: 4R: status=sent\n")
    assert log.stat().st_ino == inode
    assert (tmp_path / "mail.log.1").read_text().endswith("4Q: status=sent\n")
    # Appended after the truncation: O_APPEND writes land at the new end, not at the old offset.
    assert log.read_text() == "Dec  5 01:00:01 relay postfix/smtp[1]: 4R: status=sent\n"


def test_a_log_past_its_size_cap_rotates_at_once_and_at_most_7_are_kept(tmp_path: Path) -> None:
    """maxsize: a log over 100 MB rotates at the timer's next run (every 5 minutes), not only
    once a day; 7 rotated files are kept, all but the newest compressed. A long outage, whose
    every retry is logged, fills the log and not the disk."""
    drop_in = render_template(LOGROTATE_CONFIG_PATH, RelaySettings(allowed_cidrs=("10.0.0.0/16",)))
    log = tmp_path / "mail.log"
    config = tmp_path / "cmc-relay"
    config.write_text(drop_in.replace(MAIL_LOG, str(log)))

    def rotate() -> None:  # as cmc-relay-logrotate.service runs it, with its own state
        subprocess.run([LOGROTATE, "--state", str(tmp_path / "state"), str(config)], check=True)

    line = (
        b"Dec  5 01:00:00 relay postfix/smtp[1]: 4Q: to=<user@example.com>, relay=none, "
        b"delay=9, dsn=4.4.1, status=deferred (connect to sandbox.smtps.jp: Connection refused)\n"
    )
    log.write_bytes(line * 1000)
    rotate()
    assert sorted(tmp_path.glob("mail.log.*")) == []  # small, and not a day old: left alone
    inode = log.stat().st_ino
    for _ in range(9):  # each round: an outage's logging past the cap between two runs
        log.write_bytes(line * (100 * 1024 * 1024 // len(line) + 1))
        rotate()
        assert (log.stat().st_ino, log.stat().st_size) == (inode, 0)
    rotated = sorted(path.name for path in tmp_path.glob("mail.log.*"))
    assert rotated == ["mail.log.1", *(f"mail.log.{n}.gz" for n in range(2, 8))]
    kept = sum(path.stat().st_size for path in tmp_path.glob("mail.log*"))
    print(f"9 rounds of 100 MB logged: {kept / 2**20:.1f} MiB kept on disk")
    assert kept < 2 * 100 * 2**20  # the uncompressed newest and 6 compressed ones
