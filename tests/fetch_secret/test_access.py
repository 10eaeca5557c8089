"""Secrets Manager refusing, throttling or out of reach: retried with backoff until --max-wait,
then reported with its own exit code; the table kept. (The two ways access is denied: see
``harness``.)"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
from moto.core.authorization import enable_iam_authentication

from tests.fetch_secret.harness import (
    ARN,
    MARK,
    NEEDS_POSTFIX,
    PYTHON,
    SCRIPT,
    Env,
    assert_no_leak,
    aws_client,
    creds,
    new_secret,
)

pytestmark = NEEDS_POSTFIX


# --------------------------------------------------------------------------- access denied
@pytest.fixture
def iam_users(moto_url: str) -> dict[str, dict[str, str]]:
    """An admin user allowed everything and a reader with no permission yet."""
    iam = aws_client("iam", moto_url)
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
    iam = aws_client("iam", moto_url, admin["AccessKeyId"], admin["SecretAccessKey"])
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
