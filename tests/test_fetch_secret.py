"""userdata/scripts/cmc-relay-fetch-secret against moto's real server and real postmap.

The script runs as a subprocess (the venv's python unless CMC_FETCH_SECRET_PYTHON says
otherwise) with a private Postfix config directory. ``postmap`` and ``postfix`` are wrapped
on PATH by shims that log their argv, and one test runs the script under an audit hook
that logs every process it spawns, so the tests can prove the secret never reaches a
command line. The env sets AWS_IGNORE_CONFIGURED_ENDPOINT_URLS so that, like Debian 12's
boto3 1.26, boto3 itself ignores AWS_ENDPOINT_URL*: the script must pass it explicitly.

Access denied is exercised two ways, because moto's IAM enforcement answers JSON-protocol
services with an XML 403 body (botocore then sees error code "403", not
"AccessDeniedException"): once through moto's real policy evaluation (an IAM user without
permission, then granted while the script is retrying), and once through a tiny local
endpoint that answers exactly like Secrets Manager does (HTTP 400,
``{"__type": "AccessDeniedException"}``).

All traffic stays on 127.0.0.1: credentials come from env vars and IMDS is disabled.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from moto.core.authorization import enable_iam_authentication

from simworld.netns_rig import moto_on_loopback

SCRIPT = Path(__file__).resolve().parents[1] / "userdata" / "scripts" / "cmc-relay-fetch-secret"
NEXT_HOP = "[sandbox.smtps.jp]:10025"
REGION = "ap-northeast-1"
MARK = "Zq9-SECRET-MARKER-7xW"  # distinctive: must never show up in any output or argv
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin:/sbin:/bin")
POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin")

# The interpreter that runs the script: the venv's by default; point it at e.g. a python
# with Debian 12's boto3 1.26 to check old-boto3 compatibility.
PYTHON = os.environ.get("CMC_FETCH_SECRET_PYTHON", sys.executable)

pytestmark = pytest.mark.skipif(not (POSTMAP and POSTFIX), reason="Postfix is not installed")


# Runs the script with a PEP 578 audit hook that logs every process it spawns, whatever
# the program and however it is found: argv is visible to every local user via /proc.
AUDIT_WRAPPER = """
import runpy, sys
log = open(sys.argv.pop(1), "a")
def hook(event, args):
    if event.split(".")[0] in ("subprocess", "os") and event.split(".")[1] in (
        "Popen", "system", "exec", "posix_spawn", "spawn", "fork"):
        print(event, repr(args), file=log, flush=True)
sys.addaudithook(hook)
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_on_loopback() as endpoint:
        yield endpoint


def _client(service: str, url: str, key: str = "testing", secret: str = "testing") -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


@pytest.fixture
def sm(moto_url: str) -> Any:
    return _client("secretsmanager", moto_url)


@pytest.fixture
def pfdir(tmp_path: Path) -> Path:
    d = tmp_path / "postfix"
    d.mkdir()
    (d / "main.cf").write_text("compatibility_level = 3.6\n")
    if Path("/etc/postfix/master.cf").exists():
        shutil.copy("/etc/postfix/master.cf", d / "master.cf")
    age(d / "main.cf")
    return d


def age(path: Path) -> None:
    """Postfix re-reads a main.cf modified within the last ~2 s until it is stable
    (300 ms sleeps, about 2 s per command): backdate it to keep the tests fast."""
    past = time.time() - 60
    os.utime(path, (past, past))


@pytest.fixture
def shims(tmp_path: Path) -> Path:
    """A bin dir whose postmap/postfix log their argv, then run the real programs.

    postfix pretends to be running (status 0, reload 0) while the file ``running`` exists.
    """
    b = tmp_path / "shims"
    b.mkdir()
    log = 'printf "%s\\n" "$(basename "$0") $*" >> "$SHIM_DIR/argv.log"\n'
    (b / "postmap").write_text(f'#!/bin/sh\n{log}exec {POSTMAP} "$@"\n')
    (b / "postfix").write_text(
        f'#!/bin/sh\n{log}[ -e "$SHIM_DIR/running" ] && exit 0\nexec {POSTFIX} "$@"\n'
    )
    for f in ("postmap", "postfix"):
        (b / f).chmod(0o755)
    return b


class Env:
    """Runs the script with a given env file, PATH shims and AWS settings."""

    def __init__(self, tmp_path: Path, pfdir: Path, shims: Path, moto_url: str) -> None:
        self.tmp, self.pfdir, self.shims = tmp_path, pfdir, shims
        self.tls_arn: str | None = None  # CMC_INBOUND_TLS_SECRET_ARN, when set
        self.aws = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_url,
            # behave like Debian 12's boto3 1.26, which ignores AWS_ENDPOINT_URL*:
            # the script must pass the endpoint explicitly
            "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
        }

    def env_file(self, arn: str, hop: str = NEXT_HOP) -> Path:
        """As relay.env has them: no CMC_SECRET_ARN (IP auth) when ``arn`` is empty, and
        CMC_INBOUND_TLS_SECRET_ARN when ``tls_arn`` is set."""
        p = self.tmp / f"relay-{uuid.uuid4().hex[:6]}.env"
        lines = [f"CMC_SECRET_ARN={arn}\n" if arn else "", f"CMC_NEXT_HOP={hop}\n"]
        if self.tls_arn:
            lines.append(f"CMC_INBOUND_TLS_SECRET_ARN={self.tls_arn}\n")
        p.write_text("# written by the test\n\n" + "".join(lines))
        return p

    def base_env(self, **aws: str | None) -> dict[str, str]:
        env = {
            "PATH": f"{self.shims}:/usr/bin:/bin",
            "HOME": str(self.tmp),
            "SHIM_DIR": str(self.shims),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.tmp / "no-aws-credentials"),
        }
        merged = {**self.aws, **aws}
        env.update({k: v for k, v in merged.items() if v is not None})
        return env

    def run(
        self, arn: str, *, max_wait: float = 2, audit: Path | None = None, **aws: str | None
    ) -> subprocess.CompletedProcess[str]:
        wrap = ["-c", AUDIT_WRAPPER, str(audit)] if audit else []
        return subprocess.run(
            [PYTHON, *wrap, str(SCRIPT), *self.cmd_args(arn, max_wait)],
            env=self.base_env(**aws),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def cmd_args(self, arn: str, max_wait: float) -> list[str]:
        return [
            "--env-file",
            str(self.env_file(arn)),
            "--postfix-config-dir",
            str(self.pfdir),
            "--max-wait",
            str(max_wait),
        ]

    @property
    def argv_log(self) -> str:
        p = self.shims / "argv.log"
        return p.read_text() if p.exists() else ""

    @property
    def table(self) -> Path:
        return self.pfdir / "relay_password"

    @property
    def compiled(self) -> Path:
        return self.pfdir / "relay_password.db"

    def query(self, key: str = NEXT_HOP) -> str:
        p = subprocess.run(
            [str(POSTMAP), "-c", str(self.pfdir), "-q", key, f"hash:{self.table}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return p.stdout.strip()

    def seed_table(self) -> None:
        """An existing table, as a previous successful run left it."""
        self.table.write_text(f"{NEXT_HOP} apiuser:good-password\n")
        self.table.chmod(0o600)
        subprocess.run([str(POSTMAP), "-c", str(self.pfdir), str(self.table)], check=True)

    def snapshot(self) -> tuple[bytes, int, int, bytes, int]:
        t, c = self.table.stat(), self.compiled.stat()
        return (
            self.table.read_bytes(),
            t.st_ino,
            t.st_mtime_ns,
            self.compiled.read_bytes(),
            c.st_mtime_ns,
        )


@pytest.fixture
def env(tmp_path: Path, pfdir: Path, shims: Path, moto_url: str) -> Env:
    return Env(tmp_path, pfdir, shims, moto_url)


def new_secret(sm: Any, value: str) -> str:
    return str(
        sm.create_secret(Name=f"cmc-relay-{uuid.uuid4().hex[:8]}", SecretString=value)["ARN"]
    )


def creds(user: str, password: str) -> str:
    return json.dumps({"username": user, "password": password})


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def assert_no_leak(env: Env, *procs: subprocess.CompletedProcess[str]) -> None:
    for p in procs:
        assert MARK not in p.stdout and MARK not in p.stderr
        assert "Traceback" not in p.stderr
    assert MARK not in env.argv_log
    leftovers = [p.name for p in env.pfdir.iterdir() if p.name.startswith(".relay_password")]
    assert leftovers == []


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


# --------------------------------------------------------------------------- access denied
@pytest.fixture
def iam_users(moto_url: str) -> dict[str, dict[str, str]]:
    """An admin user allowed everything and a reader with no permission yet."""
    iam = _client("iam", moto_url)
    keys = {}
    for name in ("admin", "reader"):
        user = f"{name}-{uuid.uuid4().hex[:6]}"
        iam.create_user(UserName=user)
        keys[name] = {"user": user, **iam.create_access_key(UserName=user)["AccessKey"]}
    allow_all = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName=keys["admin"]["user"], PolicyName="all", PolicyDocument=json.dumps(allow_all)
    )
    return keys


def test_access_denied_by_iam_is_retried_then_reported(
    env: Env, sm: Any, iam_users: dict[str, dict[str, str]]
) -> None:
    env.seed_table()
    before = env.snapshot()
    arn = new_secret(sm, creds("apiuser", MARK))
    reader = iam_users["reader"]
    with enable_iam_authentication():
        p = env.run(
            arn,
            max_wait=1,
            AWS_ACCESS_KEY_ID=reader["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=reader["SecretAccessKey"],
        )
    assert p.returncode == 4
    lines = p.stderr.splitlines()
    assert "retrying" in lines[0]
    assert lines[-1] == (
        f"cmc-relay-fetch-secret: access denied reading {arn} (check the instance role); "
        "gave up after 1s"
    )
    assert env.snapshot() == before
    assert_no_leak(env, p)


def test_access_granted_while_retrying_succeeds(
    env: Env, sm: Any, moto_url: str, iam_users: dict[str, dict[str, str]]
) -> None:
    """The instance role's policy propagates a little after boot: keep asking."""
    arn = new_secret(sm, creds("apiuser", MARK))
    reader, admin = iam_users["reader"], iam_users["admin"]
    iam = _client("iam", moto_url, admin["AccessKeyId"], admin["SecretAccessKey"])
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}
        ],
    }
    with enable_iam_authentication():
        proc = subprocess.Popen(
            [PYTHON, str(SCRIPT), *env.cmd_args(arn, max_wait=20)],
            env=env.base_env(
                AWS_ACCESS_KEY_ID=reader["AccessKeyId"],
                AWS_SECRET_ACCESS_KEY=reader["SecretAccessKey"],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        first = proc.stderr.readline()  # blocks until the first denial was logged
        iam.put_user_policy(
            UserName=reader["user"], PolicyName="read", PolicyDocument=json.dumps(policy)
        )
        out, err = proc.communicate(timeout=30)
    assert "access denied" in first and "retrying" in first
    assert proc.returncode == 0, err
    assert "updated" in out
    assert env.query() == f"apiuser:{MARK}"
    assert MARK not in first + out + err


class _FakeSecretsManager(BaseHTTPRequestHandler):
    """Answers like Secrets Manager's JSON protocol: errors are HTTP 400 + __type."""

    answers: ClassVar[list[tuple[int, dict[str, str]]]] = []
    requests: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(f"{self.headers['X-Amz-Target']} {body.decode()}")
        status, doc = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_sm() -> Iterator[type[_FakeSecretsManager]]:
    handler = type("Handler", (_FakeSecretsManager,), {"answers": [], "requests": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    thread.join()


DENIED = (400, {"__type": "AccessDeniedException", "Message": "User: ... is not authorized"})
THROTTLED = (400, {"__type": "ThrottlingException", "Message": "Rate exceeded"})
ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:cmc-relay-AbCdEf"


def test_access_denied_exception_wire_format(env: Env, fake_sm: Any) -> None:
    fake_sm.answers[:] = [DENIED]
    p = env.run(ARN, max_wait=1, AWS_ENDPOINT_URL_SECRETS_MANAGER=fake_sm.url)
    assert p.returncode == 4
    assert p.stderr.splitlines()[-1].startswith(
        f"cmc-relay-fetch-secret: access denied reading {ARN} (check the instance role)"
    )
    assert len(fake_sm.requests) >= 2  # retried
    assert all(r.startswith("secretsmanager.GetSecretValue") for r in fake_sm.requests)
    assert not env.table.exists()


def test_throttling_then_success(env: Env, fake_sm: Any) -> None:
    ok = {"ARN": ARN, "Name": "cmc-relay", "VersionId": "v1", "SecretString": creds("u", MARK)}
    fake_sm.answers[:] = [THROTTLED, (200, ok)]
    p = env.run(ARN, max_wait=10, AWS_ENDPOINT_URL_SECRETS_MANAGER=fake_sm.url)
    assert p.returncode == 0, p.stderr
    assert "ThrottlingException; retrying" in p.stderr
    assert env.query() == f"u:{MARK}"
    assert_no_leak(env, p)


# --------------------------------------------------------------------------- unreachable
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_gives_up_at_max_wait(env: Env) -> None:
    p_url = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    p = env.run(ARN, max_wait=2, AWS_ENDPOINT_URL_SECRETS_MANAGER=None, AWS_ENDPOINT_URL=p_url)
    elapsed = time.monotonic() - t0
    assert p.returncode == 6
    assert 2 <= elapsed < 10
    lines = p.stderr.splitlines()
    assert len(lines) >= 2 and all("EndpointConnectionError" in line for line in lines)
    assert lines[-1].endswith("; gave up after 2s")
    assert not env.table.exists()


def test_no_credentials_is_retried_then_reported(env: Env) -> None:
    p = env.run(ARN, max_wait=1, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    assert p.returncode == 6
    assert "NoCredentialsError; gave up after 1s" in p.stderr.splitlines()[-1]


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


def test_help_documents_exit_codes_and_script_is_small() -> None:
    p = subprocess.run([PYTHON, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for code in ("0 updated/unchanged", "3 secret not found", "4 access", "7 table"):
        assert code in p.stdout
    assert "--max-wait" in p.stdout
    assert SCRIPT.read_text().startswith("#!/usr/bin/python3\n")
    assert SCRIPT.stat().st_size < 8 * 1024  # shipped inside 16 KB of user data


# --------------------------------------------------------------------------- inbound TLS
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(not OPENSSL, reason="openssl is not installed")


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two self-signed EC key pairs (key, cert), as the secret and the host's tools see them."""
    d = tmp_path_factory.mktemp("pems")
    out: dict[str, str] = {}
    for n in ("1", "2"):
        subprocess.run(
            [str(OPENSSL), "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", f"/CN=relay{n}.test",
             "-keyout", str(d / f"key{n}"), "-out", str(d / f"crt{n}")],
            check=True, capture_output=True,
        )  # fmt: skip
        out[f"key{n}"], out[f"crt{n}"] = (d / f"key{n}").read_text(), (d / f"crt{n}").read_text()
    return out


def key_body(pem: str) -> str:
    """The key's base64 lines: what must never be printed."""
    return "".join(pem.splitlines()[1:-1])


@pytest.fixture
def tls_env(env: Env) -> Env:
    """main.cf names the chain file, as the rendered main.cf does."""
    main_cf = env.pfdir / "main.cf"
    main_cf.write_text(
        main_cf.read_text() + f"smtpd_tls_chain_files = {env.pfdir}/cmc-relay-inbound-tls.pem\n"
    )
    age(main_cf)
    return env


def chain_file(env: Env) -> Path:
    return env.pfdir / "cmc-relay-inbound-tls.pem"


def assert_no_key_leak(env: Env, key: str, *procs: subprocess.CompletedProcess[str]) -> None:
    for p in procs:
        for line in key.splitlines()[1:-1]:
            assert line not in p.stdout + p.stderr
    assert key_body(key) not in env.argv_log.replace("\n", "")
    leftovers = [p.name for p in env.pfdir.iterdir() if p.name.startswith(".cmc-relay-inbound")]
    assert leftovers == []


@needs_openssl
def test_certificate_secret_is_installed_private_and_reloaded_on_change(
    tls_env: Env, sm: Any, pems: dict[str, str], tmp_path: Path
) -> None:
    env, audit = tls_env, tmp_path / "spawned.log"
    # As exported by tools that annotate their PEM ("Bag Attributes"): text around is dropped.
    value = f"Bag Attributes\n{pems['key1']}subject=CN = relay1.test\n{pems['crt1']}"
    env.tls_arn = new_secret(sm, value)
    arn = new_secret(sm, creds("apiuser", MARK))
    p = env.run(arn, audit=audit)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "cmc-relay-fetch-secret: relay_password updated (postfix not running)",
        "cmc-relay-fetch-secret: cmc-relay-inbound-tls.pem updated (postfix not running)",
    ]
    pem = chain_file(env)
    assert pem.read_text() == pems["key1"] + pems["crt1"]  # key first: Postfix's order
    assert mode(pem) == 0o600 and pem.stat().st_uid == os.geteuid()
    assert env.query() == f"apiuser:{MARK}"
    # The key goes to openssl on stdin, never on a command line.
    assert "'openssl'" in audit.read_text() and key_body(pems["key1"]) not in audit.read_text()
    assert_no_key_leak(env, pems["key1"], p)
    assert_no_leak(env, p)

    (env.shims / "running").touch()
    before, log_before = pem.stat().st_mtime_ns, env.argv_log
    p = env.run(arn)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(" unchanged\n") == 2
    assert pem.stat().st_mtime_ns == before and env.argv_log == log_before  # no reload

    sm.put_secret_value(SecretId=env.tls_arn, SecretString=pems["key2"] + pems["crt2"])
    p = env.run(arn)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "cmc-relay-fetch-secret: relay_password unchanged",
        "cmc-relay-fetch-secret: cmc-relay-inbound-tls.pem updated, postfix reloaded",
    ]
    assert pem.read_text() == pems["key2"] + pems["crt2"]
    new_lines = env.argv_log[len(log_before) :].splitlines()
    assert new_lines == [f"postfix -c {env.pfdir} status", f"postfix -c {env.pfdir} reload"]
    assert_no_key_leak(env, pems["key2"], p)


@needs_openssl
def test_ip_mode_fetches_only_the_certificate(tls_env: Env, sm: Any, pems: dict[str, str]) -> None:
    """auth_mode ip: no CMC_SECRET_ARN in relay.env, and no password table to write."""
    env = tls_env
    env.tls_arn = new_secret(sm, pems["key1"] + pems["crt1"] + pems["crt2"])  # with a chain
    p = env.run("")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{SCRIPT.name}: cmc-relay-inbound-tls.pem updated (postfix not running)\n"
    assert chain_file(env).read_text() == pems["key1"] + pems["crt1"] + pems["crt2"]
    assert not env.table.exists()
    assert "postmap" not in env.argv_log


def _bad_certificates(pems: dict[str, str]) -> dict[str, tuple[str, str]]:
    not_pem = "secret is not PEM: an unencrypted key, then its certificate chain"
    mismatch = "secret's key does not match its first certificate"
    encrypted = pems["key2"].replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")
    return {
        "garbage": (f"not a certificate {MARK}", not_pem),
        "json": (creds("apiuser", MARK), not_pem),
        "key-only": (pems["key2"], not_pem),
        "certificate-only": (pems["crt2"], not_pem),
        "certificate-first": (pems["crt2"] + pems["key2"], not_pem),
        "encrypted-key": (encrypted + pems["crt2"], not_pem),
        "another-key": (pems["key1"] + pems["crt2"], mismatch),
        "damaged-key": (pems["key2"].replace("\n", "\nAAAA", 2) + pems["crt2"], mismatch),
    }


@needs_openssl
@pytest.mark.parametrize(
    "case",
    ["garbage", "json", "key-only", "certificate-only", "certificate-first", "encrypted-key",
     "another-key", "damaged-key"],
)  # fmt: skip
def test_invalid_certificate_secret_installs_nothing(
    tls_env: Env, sm: Any, pems: dict[str, str], case: str
) -> None:
    env = tls_env
    value, message = _bad_certificates(pems)[case]
    pem = chain_file(env)
    pem.write_text(pems["key1"] + pems["crt1"])  # what a previous run installed
    pem.chmod(0o600)
    before = pem.stat().st_mtime_ns
    env.tls_arn = new_secret(sm, value)
    p = env.run("")
    assert p.returncode == 5
    assert p.stderr == f"cmc-relay-fetch-secret: {message}\n"
    assert p.stdout == ""
    assert pem.read_text() == pems["key1"] + pems["crt1"] and pem.stat().st_mtime_ns == before
    assert MARK not in p.stdout + p.stderr
    assert_no_key_leak(env, pems["key1"], p)
    assert_no_key_leak(env, pems["key2"], p)


def test_certificate_secret_needs_the_chain_file_setting(env: Env) -> None:
    env.tls_arn = ARN
    p = env.run("")
    assert p.returncode == 2
    assert "smtpd_tls_chain_files is not one path: ''" in p.stderr
    env.tls_arn = "arn:aws:s3:::bucket"
    p = env.run("")
    assert p.returncode == 2
    assert "CMC_INBOUND_TLS_SECRET_ARN is not a Secrets Manager secret ARN" in p.stderr
