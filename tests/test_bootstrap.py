"""userdata/scripts/cmc-relay-bootstrap: the bundle the pointer names, from moto's real S3
server, checked against the pointer's SHA-256 before anything is written, and only safe
members installed.

The command runs as the host runs it (a subprocess, its env file, the endpoint given as
AWS_ENDPOINT_URL_S3 with AWS_IGNORE_CONFIGURED_ENDPOINT_URLS set, as Debian 12's boto3 behaves);
the checks on the archive are also called directly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from cmc_relay.userdata.render import SCRIPT_DIR, Bundle, render_bundle, script
from cmc_relay.userdata.settings import RelaySettings
from simworld.netns_rig import moto_on_loopback
from tests.host_scripts import SCRIPTS, load_script

bootstrap = load_script("cmc-relay-bootstrap")
REGION = "ap-northeast-1"
BUCKET = "relay-payload-0a1b2c3"
SETTINGS = RelaySettings(allowed_cidrs=("10.0.0.0/16",), os="debian-13")
SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_on_loopback() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    client = boto3.client(
        "s3", endpoint_url=moto_url, region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return client


def archive(*members: tarfile.TarInfo, content: bytes = b"#!/bin/sh\n") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if member.isreg():
                member.size = len(content)
            tar.addfile(member, io.BytesIO(content) if member.isreg() else None)
    return buffer.getvalue()


def regular(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.mode = 0o755
    return member


def bootstrap_command(
    tmp_path: Path, moto_url: str, pointer: str
) -> tuple[list[str], dict[str, str], Path]:
    """The command as the host runs it, its environment, and the root it installs into."""
    root = tmp_path / "root"
    env_file = tmp_path / "bundle.env"
    env_file.write_text(
        f"CMC_BUNDLE_BUCKET={BUCKET}\nCMC_BUNDLE_REGION={REGION}\n"
        f"CMC_BUNDLE_POINTER={pointer}\nCMC_DRAIN_ON_DELETE=no\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "testing",  # the instance role's stand-in
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": moto_url,
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",  # like Debian 12's boto3
    }
    command = [sys.executable, str(SCRIPTS / "cmc-relay-bootstrap"), "--env-file", str(env_file)]
    command += ["--root", str(root), "--max-wait", "3"]
    return command, env, root


def run(
    tmp_path: Path, moto_url: str, pointer: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    command, env, root = bootstrap_command(tmp_path, moto_url, pointer)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return result, root


def put(s3: Any, data: bytes, named: str | None = None) -> tuple[Bundle, str]:
    """The bundle stored, and a pointer naming it (with ``named`` as its hash, if given)
    under a key of its own: the pointer's key."""
    bundle = Bundle(data, hashlib.sha256(data).hexdigest())
    s3.put_object(Bucket=BUCKET, Key=bundle.key, Body=data)
    pointer = {"key": bundle.key, "sha256": named or bundle.sha256}
    pointer_key = f"payload/pointer-{uuid.uuid4().hex}.json"
    s3.put_object(Bucket=BUCKET, Key=pointer_key, Body=json.dumps(pointer).encode())
    return bundle, pointer_key


def test_installs_the_rendered_bundle_from_s3(tmp_path: Path, moto_url: str, s3: Any) -> None:
    bundle, pointer = put(s3, render_bundle(SETTINGS, SECRET_ARN, drain=True).data)
    result, root = run(tmp_path, moto_url, pointer)
    assert result.returncode == 0, result.stderr
    installed = sorted(p.name for p in (root / SCRIPT_DIR.lstrip("/")).iterdir())
    assert installed == [
        "cmc-relay-apply", "cmc-relay-drain", "cmc-relay-fetch-secret", "cmc-relay-inbound-cert",
        "cmc-relay-install-agent", "cmc-relay-metrics", "cmc-relay-queue-volume",
        "cmc-relay-setup", "cmc-relay-verify", "cmc_relay_host.py",
    ]  # fmt: skip
    for name in installed:
        path = root / SCRIPT_DIR.lstrip("/") / name
        assert path.read_text() == script(name)
        # Commands, and beside them the module they share (not one).
        assert path.stat().st_mode & 0o7777 == (0o644 if name.endswith(".py") else 0o755)
    key = root / "etc/cmc-relay/amazon-ssm-agent.asc"
    assert key.stat().st_mode & 0o7777 == 0o644
    # The configuration too, where the services read it, and the hash installed.
    assert "10.0.0.0/16" in (root / "etc/cmc-relay/main.cf").read_text()
    assert (root / "etc/dnsmasq.d/cmc-relay.conf").stat().st_mode & 0o7777 == 0o644
    assert (root / bootstrap.INSTALLED).read_text() == f"{bundle.sha256}\n"


def test_a_pointer_moved_while_booting_is_followed(tmp_path: Path, moto_url: str, s3: Any) -> None:
    """The pointer names a bundle a deployment has just deleted (it moved on): the bootstrap
    reads the pointer again and installs the bundle it names now."""
    gone = hashlib.sha256(b"the bundle before").hexdigest()
    pointer = "payload/current-moving.json"
    s3.put_object(
        Bucket=BUCKET,
        Key=pointer,
        Body=json.dumps({"key": f"payload/{gone}.tar.gz", "sha256": gone}).encode(),
    )
    current, _ = put(s3, render_bundle(SETTINGS, SECRET_ARN).data)
    moved = json.dumps({"key": current.key, "sha256": current.sha256}).encode()
    command, env, root = bootstrap_command(tmp_path, moto_url, pointer)
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        first = process.stderr.readline()  # the first try failed: the deployment moves on
        s3.put_object(Bucket=BUCKET, Key=pointer, Body=moved)
        rest = process.stderr.read()
    assert process.returncode == 0, first + rest
    assert "S3 answered NoSuchKey" in first and "retrying" in first
    assert (root / bootstrap.INSTALLED).read_text() == f"{current.sha256}\n"


def test_a_bundle_with_another_hash_is_refused_before_anything_is_written(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    pinned = hashlib.sha256(b"the bundle the deployment rendered").hexdigest()
    bundle, pointer = put(s3, render_bundle(SETTINGS, SECRET_ARN).data, named=pinned)
    result, root = run(tmp_path, moto_url, pointer)
    assert result.returncode == 1
    assert f"bundle SHA-256 is {bundle.sha256}, expected {pinned}" in result.stderr
    assert not root.exists()


def test_an_object_over_the_size_cap_is_refused_unread(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    _, pointer = put(s3, os.urandom(4 * 1024 * 1024 + 1))
    result, root = run(tmp_path, moto_url, pointer)
    assert result.returncode == 1
    assert f"refused s3://{BUCKET}/{pointer}: 4194305 bytes, over 4194304" in result.stderr
    assert not root.exists()


def test_s3_failing_until_the_deadline_exits_6(tmp_path: Path, moto_url: str, s3: Any) -> None:
    result, root = run(tmp_path, moto_url, "payload/missing.json")
    assert result.returncode == 6
    assert "S3 answered NoSuchKey" in result.stderr and "retrying" in result.stderr
    assert not root.exists()


def test_a_link_is_refused(tmp_path: Path, moto_url: str, s3: Any) -> None:
    link = tarfile.TarInfo("usr/local/sbin/cmc-relay-setup")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    _, pointer = put(s3, archive(regular("usr/local/sbin/cmc-relay-verify"), link))
    result, root = run(tmp_path, moto_url, pointer)
    assert result.returncode == 1
    assert "usr/local/sbin/cmc-relay-setup: not a regular file" in result.stderr
    assert not root.exists()  # the regular member before it was not written either


@pytest.mark.parametrize(
    "name",
    [
        "usr/local/sbin/../../../etc/cron.d/x",
        "etc/cmc-relay/..",
        "/usr/local/sbin/cmc-relay-setup",
        "etc/cmc-relay/postfix/x/main.cf",  # a subdirectory of an allowed one
        "etc/cron.d/cmc-relay",
        "usr/bin/python3",
        "cmc-relay-setup",
    ],
)
def test_a_member_outside_the_allowed_directories_is_refused(name: str) -> None:
    allowed = "outside etc/apt/apt.conf.d, etc/cmc-relay, etc/cmc-relay/postfix"
    with pytest.raises(bootstrap.Refused, match=re.escape(allowed)):
        bootstrap.members(archive(regular(name)))


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE])
def test_other_member_kinds_are_refused(kind: bytes) -> None:
    member = regular("usr/local/sbin/cmc-relay-setup")
    member.type, member.linkname = kind, "usr/local/sbin/cmc-relay-verify"
    with pytest.raises(bootstrap.Refused, match="not a regular file"):
        bootstrap.members(archive(member))


def test_modes_keep_no_setuid_or_group_write() -> None:
    member = regular("usr/local/sbin/cmc-relay-setup")
    member.mode = 0o6777
    assert bootstrap.members(archive(member)) == [
        ("usr/local/sbin/cmc-relay-setup", 0o755, b"#!/bin/sh\n")
    ]
