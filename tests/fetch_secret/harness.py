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
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.host_scripts import SCRIPTS

SCRIPT = SCRIPTS / "cmc-relay-fetch-secret"
NEXT_HOP = "[sandbox.smtps.jp]:10025"
REGION = "ap-northeast-1"
# A well-formed secret ARN nothing answers for.
ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:cmc-relay-AbCdEf"
MARK = "Zq9-SECRET-MARKER-7xW"  # distinctive: must never show up in any output or argv
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin:/sbin:/bin")
POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin")

# The interpreter that runs the script: the venv's by default; point it at e.g. a python
# with Debian 12's boto3 1.26 to check old-boto3 compatibility.
PYTHON = os.environ.get("CMC_FETCH_SECRET_PYTHON", sys.executable)

NEEDS_POSTFIX = pytest.mark.skipif(not (POSTMAP and POSTFIX), reason="Postfix is not installed")


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
sys.path.insert(0, sys.argv[0].rpartition("/")[0])  # as python does for the script it runs
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def aws_client(service: str, url: str, key: str = "testing", secret: str = "testing") -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def age(path: Path) -> None:
    """Postfix re-reads a main.cf modified within the last ~2 s until it is stable
    (300 ms sleeps, about 2 s per command): backdate it to keep the tests fast."""
    past = time.time() - 60
    os.utime(path, (past, past))


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
