"""A configuration change applied in place to a booted twin (Debian 13), as ``pulumi up`` does
it: the new bundle and pointer stored in (moto's) S3, then ``cmc-relay-apply <sha256>`` run on
the host, the command the component's ``<host>-apply`` step runs through Systems Manager.

The backlog is mail the service defers: the stand-in answers 451 to every message while it
keeps greeting and authenticating, so the verifier (which talks to the service) can pass, and
the deferred mail must still be queued after the change. A client connects again and again
throughout the apply; none of its sessions may be refused. Then a change the verifier rejects
(the service's port wrong) leaves the previous configuration serving.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from simworld.netns_rig import wait_until
from simworld.twin import world as net
from simworld.twin.scenario import ADDED_NETWORK, apply_change, boot_id, postfix_master
from simworld.twin.session import Prober, TwinBoot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="twins need root (namespaces, nspawn)"),
]
BACKLOG = tuple(f"<backlog-{i}@twin.test>" for i in range(3))


def postconf(boot: TwinBoot, name: str) -> str:
    return boot.run("postconf", "-h", name, check=True).stdout.strip()


def test_a_config_change_is_applied_in_place_without_refusing_a_session(
    booted: TwinBoot, tmp_path: Path
) -> None:
    boot = booted
    assert boot.world is not None and boot.world.standin is not None
    boot.world.standin.reconfigure(data_451_messages=100_000)  # every message deferred
    for message_id in BACKLOG:
        assert boot.submit(net.CLIENT_IP, message_id).accepted
    queued = boot.queued_message_ids
    wait_until(lambda: set(BACKLOG) <= queued(), 60, "the backlog queued", interval=1)
    machine, master = boot_id(boot), postfix_master(boot)
    assert ADDED_NETWORK not in postconf(boot, "mynetworks")

    changed = dataclasses.replace(
        boot.settings,
        allowed_cidrs=(*boot.settings.allowed_cidrs, ADDED_NETWORK),
        message_size_limit=20_480_000,
    )
    prober = Prober(boot, tmp_path)
    time.sleep(1)  # sessions before the change too
    change = apply_change(boot, changed)  # the bundle stored, as `pulumi up` does, then applied
    applied = change.result
    time.sleep(1)
    probed = prober.stop()
    print(
        f"in-place change: cmc-relay-apply {change.seconds:.1f}s ({change.with_store_seconds:.1f}s"
        f" with storing the bundle; target 30s); {probed['sessions']} client sessions during it,"
        f" {probed['refused']} refused"
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert json.loads(applied.stdout)["ok"] is True  # the verifier's report
    assert f"applied bundle {change.sha256}" in applied.stderr
    # The same machine and Postfix master (a reload, not a restart), the new settings live.
    assert boot_id(boot) == machine
    assert postfix_master(boot) == master
    assert ADDED_NETWORK in postconf(boot, "mynetworks")
    assert postconf(boot, "message_size_limit") == "20480000"
    # The backlog still queued, every client session answered.
    assert set(BACKLOG) <= boot.queued_message_ids()
    assert probed["sessions"] >= 5
    assert probed["refused"] == 0, probed["reasons"]
    code, report = boot.verify()
    assert code == 0, report
    boot.settings = changed


def test_a_change_the_verifier_rejects_leaves_the_previous_configuration(
    booted: TwinBoot, tmp_path: Path
) -> None:
    boot = booted
    before = {name: postconf(boot, name) for name in ("mynetworks", "message_size_limit")}
    transport = boot.run("postmap", "-q", "*", "hash:/etc/postfix/transport").stdout.strip()
    wrong_port = dataclasses.replace(
        boot.settings, smtp_port=2525, allowed_cidrs=(*boot.settings.allowed_cidrs, "10.0.8.0/24")
    )
    prober = Prober(boot, tmp_path)
    change = apply_change(boot, wrong_port)
    applied = change.result
    probed = prober.stop()
    print(f"failed apply: {applied.stderr.strip().splitlines()[-1]}")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "not applied, the previous configuration serves" in applied.stderr
    assert "smtp-service" in applied.stderr  # the verifier's failed check is named
    # Everything as it was: Postfix's settings and tables, the staged files, the record.
    assert {name: postconf(boot, name) for name in before} == before
    assert boot.run("postmap", "-q", "*", "hash:/etc/postfix/transport").stdout.strip() == (
        transport
    )
    assert "10.0.8.0/24" not in boot.run("cat", "/etc/cmc-relay/main.cf").stdout
    assert change.sha256 not in boot.run("cat", "/etc/cmc-relay/bundle.sha256").stdout
    assert set(BACKLOG) <= boot.queued_message_ids()
    assert probed["refused"] == 0, probed["reasons"]
    code, report = boot.verify()
    assert code == 0, report
