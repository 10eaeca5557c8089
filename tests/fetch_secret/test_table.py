"""The password table cmc-relay-fetch-secret writes from the secret: exact, private, compiled,
re-written only on a change; bad values and bad settings leave the table as it was."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fetch_secret.harness import (
    ARN,
    MARK,
    NEEDS_POSTFIX,
    NEXT_HOP,
    PYTHON,
    REGION,
    SCRIPT,
    Env,
    age,
    assert_no_leak,
    creds,
    mode,
    new_secret,
)

pytestmark = NEEDS_POSTFIX


# --------------------------------------------------------------------------- success
def test_first_run_writes_exact_private_table_and_compiles_it(env: Env, sm: Any) -> None:
    arn = new_secret(sm, creds("apiuser", MARK))
    p = env.run(arn)
    assert p.returncode == 0, p.stderr
    assert "relay_password updated (postfix not running)" in p.stdout
    assert env.table.read_text() == f"{NEXT_HOP} apiuser:{MARK}\n"
    for f in (env.table, env.compiled):
        assert mode(f) == 0o600, f
        assert f.stat().st_uid == os.geteuid()
    assert env.query() == f"apiuser:{MARK}"  # G7: the key is exactly the next hop
    assert env.query("sandbox.smtps.jp") == ""
    # postmap got the file name only, no map type prefix (default_database_type decides)
    assert f"postmap -c {env.pfdir} {env.table}\n" in env.argv_log
    assert_no_leak(env, p)


def test_second_run_is_a_no_op(env: Env, sm: Any) -> None:
    arn = new_secret(sm, creds("apiuser", MARK))
    assert env.run(arn).returncode == 0
    before, log_before = env.snapshot(), env.argv_log
    p = env.run(arn)
    assert p.returncode == 0, p.stderr
    assert "unchanged" in p.stdout
    assert env.snapshot() == before  # same inode, same mtimes: nothing rewritten
    assert env.argv_log == log_before  # neither postmap nor postfix reload ran
    assert_no_leak(env, p)


def test_rotation_rewrites_table_and_reloads_running_postfix(env: Env, sm: Any) -> None:
    arn = new_secret(sm, creds("apiuser", "old-password"))
    assert env.run(arn).returncode == 0
    (env.shims / "running").touch()
    sm.put_secret_value(SecretId=arn, SecretString=creds("apiuser", MARK))
    p = env.run(arn)
    assert p.returncode == 0, p.stderr
    assert "updated, postfix reloaded" in p.stdout
    assert env.table.read_text() == f"{NEXT_HOP} apiuser:{MARK}\n"
    assert env.query() == f"apiuser:{MARK}"
    assert env.argv_log.splitlines()[-2:] == [
        f"postfix -c {env.pfdir} status",
        f"postfix -c {env.pfdir} reload",
    ]
    assert_no_leak(env, p)


def test_secret_is_never_in_any_spawned_command_line(env: Env, sm: Any, tmp_path: Path) -> None:
    audit = tmp_path / "spawned.log"
    arn = new_secret(sm, creds("apiuser", "old-password"))
    assert env.run(arn, audit=audit).returncode == 0
    (env.shims / "running").touch()
    sm.put_secret_value(SecretId=arn, SecretString=creds(MARK, MARK))
    p = env.run(arn, audit=audit)
    assert p.returncode == 0, p.stderr
    assert env.query() == f"{MARK}:{MARK}"
    spawned = audit.read_text().splitlines()
    programs = [line.split(" (", 1)[1].split(",")[0] for line in spawned]
    assert programs == ["'postmap'", "'postfix'"] * 2 + ["'postfix'"], spawned
    assert MARK not in audit.read_text()
    assert_no_leak(env, p)


def test_loose_compiled_map_is_tightened(env: Env, sm: Any) -> None:
    """postmap copies the source's mode only when it creates the map: an existing
    relay_password.db keeps its mode, so the script must chmod it itself."""
    arn = new_secret(sm, creds("apiuser", "old-password"))
    assert env.run(arn).returncode == 0
    env.compiled.chmod(0o644)
    sm.put_secret_value(SecretId=arn, SecretString=creds("apiuser", MARK))
    p = env.run(arn)
    assert p.returncode == 0, p.stderr
    assert mode(env.compiled) == 0o600
    assert env.query() == f"apiuser:{MARK}"


def test_postmap_failure_is_reported_and_healed_on_next_run(env: Env, sm: Any) -> None:
    arn = new_secret(sm, creds("apiuser", "old-password"))
    assert env.run(arn).returncode == 0
    sm.put_secret_value(SecretId=arn, SecretString=creds("apiuser", MARK))
    main_cf = env.pfdir / "main.cf"
    good = main_cf.read_text()
    main_cf.write_text(good + "default_database_type = nosuchtype\n")
    age(main_cf)
    p = env.run(arn)
    assert p.returncode == 7
    assert "postmap failed" in p.stderr and "nosuchtype" in p.stderr
    assert_no_leak(env, p)
    main_cf.write_text(good)
    age(main_cf)
    p = env.run(arn)  # the table text is already new, but the map is stale: not "unchanged"
    assert p.returncode == 0, p.stderr
    assert "updated" in p.stdout
    assert env.query() == f"apiuser:{MARK}"


# --------------------------------------------------------------------------- bad values
BAD_VALUES = [
    pytest.param(f'{{"username": "apiuser", "password": "{MARK}', "not valid JSON", id="json"),
    pytest.param(f'["{MARK}"]', "secret JSON is not an object", id="not-object"),
    pytest.param(json.dumps({"username": "u", "pass": MARK}), 'lacks "password"', id="no-pw"),
    pytest.param(json.dumps({"user": MARK, "password": "p"}), 'lacks "username"', id="no-user"),
    pytest.param(json.dumps({"username": "u", "password": ""}), 'lacks "password"', id="empty"),
    pytest.param(json.dumps({"username": "u", "password": 12345}), 'lacks "password"', id="int"),
    pytest.param(creds("u", f"{MARK} x"), '"password" contains whitespace', id="space"),
    pytest.param(creds("u", f"{MARK}\nx"), '"password" contains whitespace', id="newline"),
    pytest.param(creds("u", f"{MARK}\x07"), '"password" contains whitespace', id="control"),
    pytest.param(creds(f"a:{MARK}", "p"), '"username" contains ":"', id="colon"),
]


@pytest.mark.parametrize(("value", "message"), BAD_VALUES)
def test_invalid_secret_value_keeps_existing_table(
    env: Env, sm: Any, value: str, message: str
) -> None:
    env.seed_table()
    before = env.snapshot()
    p = env.run(new_secret(sm, value))
    assert p.returncode == 5
    assert message in p.stderr
    assert p.stderr.count("\n") == 1  # one clear line
    assert env.snapshot() == before
    assert_no_leak(env, p)


def test_missing_secret_is_final_and_keeps_existing_table(env: Env, sm: Any) -> None:
    env.seed_table()
    before = env.snapshot()
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:cmc-relay-gone-AbCdEf"
    t0 = time.monotonic()
    p = env.run(arn, max_wait=30)
    assert time.monotonic() - t0 < 15  # not retried until --max-wait
    assert p.returncode == 3
    assert (
        p.stderr == f"cmc-relay-fetch-secret: secret not found (or scheduled for deletion): {arn}\n"
    )
    assert env.snapshot() == before


# --------------------------------------------------------------------------- settings
def test_bad_settings(env: Env, tmp_path: Path) -> None:
    p = env.run("arn:aws:s3:::bucket")
    assert p.returncode == 2 and "CMC_SECRET_ARN is not a Secrets Manager" in p.stderr
    p = subprocess.run(
        [PYTHON, str(SCRIPT), "--env-file", str(tmp_path / "absent.env")],
        env=env.base_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and "cannot read" in p.stderr
    bad_hop = tmp_path / "hop.env"
    bad_hop.write_text(f"CMC_SECRET_ARN={ARN}\nCMC_NEXT_HOP=\n")
    p = subprocess.run(
        [PYTHON, str(SCRIPT), "--env-file", str(bad_hop)],
        env=env.base_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and "CMC_NEXT_HOP is empty" in p.stderr


def test_help_documents_exit_codes_as_the_hosts_command() -> None:
    """Run as the host runs it, a command (its interpreter the host's python3, beside the
    module the scripts share); --help needs nothing beyond the standard library."""
    p = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for code in ("0 updated/unchanged", "3 secret not found", "4 access", "7 table"):
        assert code in p.stdout
    assert "--max-wait" in p.stdout
