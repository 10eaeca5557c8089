"""The payload's logrotate drop-in for the mail log, run by the real logrotate on a copy of it
that names a file of the test's (the drop-in's own path is the host's /var/log)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cmc_relay.userdata.render import MAIL_LOG, render_template
from cmc_relay.userdata.settings import RelaySettings

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
pytestmark = pytest.mark.skipif(not os.path.exists(LOGROTATE), reason="logrotate missing")


def test_rotation_keeps_the_file_postlogd_writes_to(tmp_path: Path) -> None:
    """copytruncate: the log Postfix has open stays the same file (same inode), emptied; the
    lines it held are in mail.log.1 (compressed only from the next rotation on)."""
    drop_in = render_template("logrotate", RelaySettings(allowed_cidrs=("10.0.0.0/16",)))
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
