"""userdata/scripts/cmc-relay-apply: a new bundle applied to a serving host in place.

What it decides is tested directly on a temporary root (which files differ, which Postfix
settings a new main.cf drops, the snapshot it restores on failure); the command itself runs as
the host runs it against moto's real S3 server for what happens before anything is touched: a
bundle already applied, a bundle refused. The whole apply (real Postfix reloaded, dnsmasq, the
verifier, a failing apply restored) runs on the booted twin (tests/twin/test_twin_apply.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from cmc_relay.userdata.render import POINTER_KEY, render_bundle
from cmc_relay.userdata.settings import RelaySettings
from simworld.netns_rig import moto_on_loopback
from tests.host_scripts import SCRIPTS, load_script

apply = load_script("cmc-relay-apply")
bootstrap = load_script("cmc-relay-bootstrap")
REGION = "ap-northeast-1"
BUCKET = "relay-payload-apply"
SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
SETTINGS = RelaySettings(allowed_cidrs=("10.0.0.0/16",), os="debian-13")
WIDER = RelaySettings(allowed_cidrs=("10.0.0.0/16", "10.9.0.0/16"), os="debian-13")


def members(settings: RelaySettings) -> list[tuple[str, int, bytes]]:
    return bootstrap.members(render_bundle(settings, SECRET_ARN).data)


def test_only_the_files_that_differ_are_changed(tmp_path: Path) -> None:
    bootstrap.install(members(SETTINGS), tmp_path)
    differing = apply.changed(members(WIDER), tmp_path)
    assert [name for name, _, _ in differing] == ["etc/cmc-relay/main.cf"]
    assert b"10.9.0.0/16" in differing[0][2]
    assert apply.changed(members(SETTINGS), tmp_path) == []
    # A mode counts too (a script that lost its execute bit is installed again).
    (tmp_path / "usr/local/sbin/cmc-relay-verify").chmod(0o644)
    assert [name for name, _, _ in apply.changed(members(SETTINGS), tmp_path)] == [
        "usr/local/sbin/cmc-relay-verify"
    ]


def test_timers_the_bundle_no_longer_ships_are_named(tmp_path: Path) -> None:
    """From SMTP AUTH to IP authentication the secret fetcher's timer goes."""
    sasl = members(SETTINGS)
    pro_ip = replace(SETTINGS, plan="pro", subdomain="acme", auth_mode="ip")
    ip = bootstrap.members(render_bundle(pro_ip).data)
    bootstrap.install(sasl, tmp_path)
    assert apply.stale_timers(sasl, tmp_path) == []
    assert apply.stale_timers(ip, tmp_path) == ["cmc-relay-fetch-secret.timer"]


def test_timers_the_bundle_adds_are_named_until_enabled(tmp_path: Path) -> None:
    """rebootWindow set on a running host: its timer must be enabled, as the setup does."""
    installed = members(SETTINGS)
    bootstrap.install(installed, tmp_path)
    wants = tmp_path / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    for timer in apply.new_timers(installed, tmp_path):  # as the first boot's setup left them
        (wants / timer).symlink_to(f"../{timer}")
    assert apply.new_timers(installed, tmp_path) == []
    windowed = members(replace(SETTINGS, reboot_window="Sun 03:00"))
    assert apply.new_timers(windowed, tmp_path) == ["cmc-relay-reboot.timer"]


def test_settings_a_new_main_cf_drops_are_named() -> None:
    """postconf -e only sets: unsetting senderDomain must remove sender_canonical_maps."""
    with_policy = "myhostname = a\n# note\nsender_canonical_maps = regexp:/x\n\n"
    without = "myhostname = b\n"
    assert apply.parameters(with_policy) - apply.parameters(without) == {"sender_canonical_maps"}
    assert apply.parameters("tlsproxy/unix = tlsproxy unix - - y - 0 tlsproxy\n") == {
        "tlsproxy/unix"
    }


def test_the_snapshot_brings_back_files_and_postfix_directory(tmp_path: Path) -> None:
    root, keep = tmp_path / "root", tmp_path / "keep"
    keep.mkdir()
    postfix = root / "etc/postfix"
    postfix.mkdir(parents=True)
    (postfix / "main.cf").write_text("mynetworks = 10.0.0.0/16\n")
    (postfix / "relay_password").write_text("[h]:1 u:p\n")
    (postfix / "relay_password").chmod(0o600)
    staged = root / "etc/cmc-relay/main.cf"
    staged.parent.mkdir(parents=True)
    staged.write_text("old\n")
    names = ["etc/cmc-relay/main.cf", "etc/cmc-relay/postfix/cmc-relay-operator"]
    snapshot = apply.Snapshot.take(names, root, postfix, keep)
    # What an apply does: new files, Postfix's configuration changed and a table added.
    staged.write_text("new\n")
    operator = root / "etc/cmc-relay/postfix/cmc-relay-operator"
    operator.parent.mkdir()
    operator.write_text("table\n")
    (postfix / "main.cf").write_text("mynetworks = 10.0.0.0/8\n")
    (postfix / "cmc-relay-operator").write_text("table\n")
    snapshot.restore(root)
    assert staged.read_text() == "old\n"
    assert not operator.exists()
    assert (postfix / "main.cf").read_text() == "mynetworks = 10.0.0.0/16\n"
    assert not (postfix / "cmc-relay-operator").exists()
    assert (postfix / "relay_password").stat().st_mode & 0o777 == 0o600


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


def run_apply(tmp_path: Path, moto_url: str, sha256: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "bundle.env"
    env_file.write_text(
        f"CMC_BUNDLE_BUCKET={BUCKET}\nCMC_BUNDLE_REGION={REGION}\n"
        f"CMC_BUNDLE_POINTER={POINTER_KEY}\nCMC_DRAIN_ON_DELETE=no\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": moto_url,
    }
    command = [sys.executable, str(SCRIPTS / "cmc-relay-apply"), sha256]
    command += ["--env-file", str(env_file), "--root", str(tmp_path / "root"), "--max-wait", "2"]
    command += ["--bootstrap", str(SCRIPTS / "cmc-relay-bootstrap")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_a_bundle_already_applied_changes_nothing(tmp_path: Path, moto_url: str) -> None:
    """A new host's apply (it booted with that bundle) ends at once; nothing is fetched."""
    sha256 = hashlib.sha256(b"a bundle nobody stored").hexdigest()
    record = tmp_path / "root" / bootstrap.INSTALLED
    record.parent.mkdir(parents=True)
    record.write_text(f"{sha256}\n")
    result = run_apply(tmp_path, moto_url, sha256)
    assert result.returncode == 0, result.stderr
    assert f"already has bundle {sha256}" in result.stderr


def test_a_bundle_not_matching_its_hash_is_refused_before_anything_changes(
    tmp_path: Path, moto_url: str, s3: Any
) -> None:
    data = render_bundle(WIDER, SECRET_ARN).data
    claimed = hashlib.sha256(b"what the deployment rendered").hexdigest()
    s3.put_object(Bucket=BUCKET, Key=f"payload/{claimed}.tar.gz", Body=data)
    result = run_apply(tmp_path, moto_url, claimed)
    assert result.returncode == apply.Exit.FAILED
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert f"cmc-relay-apply: {host}: not applied" in result.stderr
    assert f"expected {claimed}" in result.stderr
    assert not (tmp_path / "root").exists()  # nothing written


def test_a_missing_bundle_is_not_applied(tmp_path: Path, moto_url: str, s3: Any) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    result = run_apply(tmp_path, moto_url, missing)
    assert result.returncode == apply.Exit.FAILED
    assert "S3 answered NoSuchKey" in result.stderr
    assert not (tmp_path / "root").exists()
