"""Operating-system updates between image moves: unattended-upgrades on Debian and Ubuntu, the
maintenance window's timer, and cmc-relay-reboot taking its host's turn (issue 21).

cmc-relay-reboot runs as a command against the IMDS stand-in (IMDSv2, instance tags), with a
reboot command that only leaves a mark; the wait for its turn is recorded instead of slept.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmc_relay.components import RelayHost
from cmc_relay.components.host import HOST_INDEX_TAG
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.render import (
    AUTO_UPGRADES_PATH,
    SCRIPT_DIR,
    UNIT_DIR,
    script,
    write_files,
)
from cmc_relay.userdata.settings import OS_NAMES, REBOOT_STAGGER_MINUTES, RelaySettings
from simworld.twin import imds
from tests.host_scripts import SCRIPTS, load_script
from tests.pulumi_harness import run_program

REBOOT = SCRIPTS / "cmc-relay-reboot"
INDEX_TAG = "cmc-relay-host-index"
ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:smtp-AbCdEf"


def files_of(**changes: Any) -> dict[str, str]:
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",), **changes)
    return {f["path"]: f["content"] for f in write_files(settings, ARN)}


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_debian_and_ubuntu_install_and_turn_on_unattended_upgrades(os_name: str) -> None:
    files = files_of(os=os_name)
    apt = os_name != "al2023"
    assert OS_PROFILES[os_name].unattended_upgrades is apt  # type: ignore[index]
    assert ("unattended-upgrades" in OS_PROFILES[os_name].packages) is apt  # type: ignore[index]
    assert (AUTO_UPGRADES_PATH in files) is apt
    if apt:
        assert files[AUTO_UPGRADES_PATH].splitlines() == [
            'APT::Periodic::Update-Package-Lists "1";',
            'APT::Periodic::Unattended-Upgrade "1";',
        ]


def test_the_reboot_timer_ships_only_with_a_window() -> None:
    assert not any("reboot" in path for path in files_of())
    files = files_of(reboot_window="Sat,Sun 04:30")
    assert files[f"{SCRIPT_DIR}/cmc-relay-reboot"] == script("cmc-relay-reboot")
    timer = files[f"{UNIT_DIR}/cmc-relay-reboot.timer"].splitlines()
    assert "OnCalendar=Sat,Sun *-*-* 04:30:00" in timer
    service = files[f"{UNIT_DIR}/cmc-relay-reboot.service"]
    assert (
        f"ExecStart=/usr/local/sbin/cmc-relay-reboot --stagger-minutes {REBOOT_STAGGER_MINUTES}"
        in service
    )
    assert "TimeoutStartSec=infinity" in service  # the wait for its turn is no failure
    setup = files[f"{SCRIPT_DIR}/cmc-relay-setup"]
    assert "systemctl enable --now cmc-relay-reboot.timer" in setup


@pytest.mark.skipif(
    subprocess.run(["systemd-analyze", "--help"], capture_output=True).returncode != 0,
    reason="no systemd-analyze",
)
@pytest.mark.parametrize("window", ["Sun 03:00", "Sat,Sun 04:30", "daily 23:59"])
def test_systemd_takes_the_window(window: str) -> None:
    timer = files_of(reboot_window=window)[f"{UNIT_DIR}/cmc-relay-reboot.timer"]
    [calendar] = [line.split("=", 1)[1] for line in timer.splitlines() if "OnCalendar" in line]
    subprocess.run(["systemd-analyze", "calendar", calendar], check=True, capture_output=True)


@contextlib.contextmanager
def metadata_with_index(index: str | None) -> Iterator[str]:
    """The IMDS stand-in on loopback; the instance has the index tag unless None."""
    facts: dict[str, Any] = {
        "mac": "0e:c2:7e:00:00:0c",
        "region": "ap-northeast-1",
        "role": "relay-role",
        "account_id": "123456789012",
        "ami_id": "ami-0123456789abcdef0",
        "instance_id": "i-0reboot000000000a",
        "instance_type": "t3.small",
        "local_ipv4": "10.0.1.11",
        "local_hostname": "ip-10-0-1-11.ap-northeast-1.compute.internal",
        "subnet_cidr": "10.0.1.0/24",
        "vpc_cidr": "10.0.0.0/16",
        "user_data_base64": "",
    }
    if index is not None:
        facts["tags"] = {"Name": "relay-2", INDEX_TAG: index}
    with imds.on_loopback(imds.instance_tree(facts)) as url:
        yield url


def run_reboot(
    endpoint: str, flag: Path, mark: Path, stagger: int = 0
) -> subprocess.CompletedProcess[str]:
    command = (
        sys.executable, REBOOT, "--stagger-minutes", str(stagger), "--reboot-flag", str(flag),
        "--reboot-command", f"touch {mark}",
    )  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_it_reboots_only_when_the_os_asks_and_says_why(tmp_path: Path) -> None:
    flag, mark = tmp_path / "reboot-required", tmp_path / "rebooted"
    with metadata_with_index("2") as endpoint:
        quiet = run_reboot(endpoint, flag, mark)
        assert quiet.returncode == 0, quiet.stderr
        assert "no reboot required" in quiet.stdout
        assert not mark.exists()
        flag.write_text("*** System restart required ***\n")
        (tmp_path / "reboot-required.pkgs").write_text("linux-image-6.12.0-1-cloud-amd64\nlibc6\n")
        due = run_reboot(endpoint, flag, mark)
    assert due.returncode == 0, due.stderr
    assert mark.exists()
    assert "host 2:" in due.stdout
    assert "rebooting: " in due.stdout
    assert "(packages: linux-image-6.12.0-1-cloud-amd64 libc6)" in due.stdout


def test_without_its_index_a_host_does_not_reboot(tmp_path: Path) -> None:
    """Instance tags not in metadata: the host cannot know its turn, so it keeps serving."""
    flag, mark = tmp_path / "reboot-required", tmp_path / "rebooted"
    flag.write_text("*** System restart required ***\n")
    with metadata_with_index(None) as endpoint:
        refused = run_reboot(endpoint, flag, mark)
    assert refused.returncode == 8
    assert f"no {INDEX_TAG} tag in instance metadata" in refused.stderr
    assert not mark.exists()


@pytest.mark.parametrize("index", [0, 1, 3])
def test_host_i_waits_i_staggers_so_one_host_reboots_at_a_time(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reboot = load_script("cmc-relay-reboot")
    slept: list[float] = []
    monkeypatch.setattr(reboot.time, "sleep", slept.append)
    monkeypatch.setattr(reboot, "host_index", lambda: index)
    monkeypatch.setattr(
        sys, "argv", ["cmc-relay-reboot", "--stagger-minutes", "30",
                      "--reboot-flag", str(tmp_path / "absent")],
    )  # fmt: skip
    reboot.main()
    assert slept == [index * 30 * 60]


def instances(window: str | None, replicas: int = 2) -> dict[str, dict[str, Any]]:
    args: dict[str, Any] = {
        "vpc_id": "vpc-team",
        "subnet_id": "subnet-1a",
        "subnet_ids": ["subnet-1a", "subnet-1c"][:replicas],
        "replicas": replicas,
        "allowed_cidrs": ["10.20.0.0/16"],
        "api_user": "cmc-user",
        "api_key": "api-key",
        **({"reboot_window": window} if window else {}),
    }
    recorder = run_program(lambda: RelayHost("relay", args))  # type: ignore[arg-type]
    return {r.name: r.inputs for r in recorder.of_type("aws:ec2/instance:Instance")}


def test_with_a_window_each_host_can_read_its_index_from_instance_metadata() -> None:
    assert HOST_INDEX_TAG == INDEX_TAG == load_script("cmc-relay-reboot").INDEX_TAG
    found = instances("Sun 03:00")
    for index, name in enumerate(("relay-instance", "relay-1-instance")):
        assert found[name]["tags"][INDEX_TAG] == str(index)
        assert found[name]["metadataOptions"]["instanceMetadataTags"] == "enabled"
        assert INDEX_TAG not in found[name]["volumeTags"]


def test_without_a_window_the_instances_are_as_they_were() -> None:
    """No tag and no metadata change: an existing stack sees no update on its instances."""
    for inputs in instances(None).values():
        assert INDEX_TAG not in inputs["tags"]
        assert "instanceMetadataTags" not in inputs["metadataOptions"]
