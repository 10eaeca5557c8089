"""userdata/scripts/cmc-relay-bootstrap: the bundle from moto's real S3 server, checked
against the pinned SHA-256 before anything is written, and only safe members installed.

The command runs as the host runs it (a subprocess, its env file, the endpoint given as
AWS_ENDPOINT_URL_S3 with AWS_IGNORE_CONFIGURED_ENDPOINT_URLS set, as Debian 12's boto3 behaves);
the checks on the archive are also called directly.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
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


def run(
    tmp_path: Path, moto_url: str, key: str, sha256: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path / "root"
    env_file = tmp_path / "bundle.env"
    env_file.write_text(
        f"CMC_BUNDLE_BUCKET={BUCKET}\nCMC_BUNDLE_KEY={key}\n"
        f"CMC_BUNDLE_REGION={REGION}\nCMC_BUNDLE_SHA256={sha256}\n"
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
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return result, root


def put(s3: Any, data: bytes) -> Bundle:
    bundle = Bundle(data, hashlib.sha256(data).hexdigest())
    s3.put_object(Bucket=BUCKET, Key=bundle.key, Body=data)
    return bundle


def test_installs_the_rendered_bundle_from_s3(tmp_path: Path, moto_url: str, s3: Any) -> None:
    bundle = put(s3, render_bundle(SETTINGS, drain=True).data)
    result, root = run(tmp_path, moto_url, bundle.key, bundle.sha256)
    assert result.returncode == 0, result.stderr
    installed = sorted(p.name for p in (root / SCRIPT_DIR.lstrip("/")).iterdir())
    assert installed == [
        "cmc-relay-drain", "cmc-relay-fetch-secret", "cmc-relay-inbound-cert",
        "cmc-relay-install-agent", "cmc-relay-metrics", "cmc-relay-setup", "cmc-relay-verify",
    ]  # fmt: skip
    for name in installed:
        path = root / SCRIPT_DIR.lstrip("/") / name
        assert path.read_text() == script(name)
        assert path.stat().st_mode & 0o7777 == 0o755
    key = root / "etc/cmc-relay/amazon-ssm-agent.asc"
    assert key.stat().st_mode & 0o7777 == 0o644


def test_a_bundle_with_another_hash_is_refused_before_anything_is_written(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    bundle = put(s3, render_bundle(SETTINGS).data)
    pinned = hashlib.sha256(b"the bundle the user data was rendered with").hexdigest()
    result, root = run(tmp_path, moto_url, bundle.key, pinned)
    assert result.returncode == 1
    assert f"bundle SHA-256 is {bundle.sha256}, expected {pinned}" in result.stderr
    assert not root.exists()


def test_an_object_over_the_size_cap_is_refused_unread(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    bundle = put(s3, os.urandom(4 * 1024 * 1024 + 1))
    result, root = run(tmp_path, moto_url, bundle.key, bundle.sha256)
    assert result.returncode == 1
    assert f"refused s3://{BUCKET}/{bundle.key}: 4194305 bytes, over 4194304" in result.stderr
    assert not root.exists()


def test_s3_failing_until_the_deadline_exits_6(tmp_path: Path, moto_url: str, s3: Any) -> None:
    result, root = run(tmp_path, moto_url, "payload/missing.tar.gz", "0" * 64)
    assert result.returncode == 6
    assert "S3 answered NoSuchKey" in result.stderr and "retrying" in result.stderr
    assert not root.exists()


def test_a_link_is_refused(tmp_path: Path, moto_url: str, s3: Any) -> None:
    link = tarfile.TarInfo("usr/local/sbin/cmc-relay-setup")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    bundle = put(s3, archive(regular("usr/local/sbin/cmc-relay-verify"), link))
    result, root = run(tmp_path, moto_url, bundle.key, bundle.sha256)
    assert result.returncode == 1
    assert "usr/local/sbin/cmc-relay-setup: not a regular file" in result.stderr
    assert not root.exists()  # the regular member before it was not written either


@pytest.mark.parametrize(
    "name",
    [
        "usr/local/sbin/../../../etc/cron.d/x",
        "etc/cmc-relay/..",
        "/usr/local/sbin/cmc-relay-setup",
        "etc/cmc-relay/postfix/main.cf",  # a subdirectory of an allowed one
        "usr/bin/python3",
        "cmc-relay-setup",
    ],
)
def test_a_member_outside_the_allowed_directories_is_refused(name: str) -> None:
    with pytest.raises(bootstrap.Refused, match="outside etc/cmc-relay, usr/local/sbin"):
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
