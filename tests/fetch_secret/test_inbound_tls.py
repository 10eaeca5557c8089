"""The inbound TLS certificate secret (inboundTlsSecretArn): key and chain installed private,
Postfix reloaded on a change, nothing installed from a bad secret."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fetch_secret.harness import (
    ARN,
    MARK,
    NEEDS_POSTFIX,
    SCRIPT,
    Env,
    age,
    assert_no_leak,
    creds,
    mode,
    new_secret,
)

pytestmark = NEEDS_POSTFIX

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
