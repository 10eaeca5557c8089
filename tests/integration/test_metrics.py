"""The on-host metrics publisher against real Postfix and moto's CloudWatch (issue 12).

The real ``cmc-relay-metrics`` runs as a command, as its timer runs it, with the rig's Postfix
(MAIL_CONFIG: ``postqueue -j``, ``postconf -h maillog_file``), the IMDS stand-in for the
instance id and Region, and moto's CloudWatch on loopback; what it published is read back
from moto. Each sample publishes under its own Relay dimension value, so it reads back alone.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from cmc_relay.userdata.metrics import (
    INSTANCE_DIMENSION,
    METRICS,
    RELAY_DIMENSION,
    publisher_config,
)
from simworld.netns_rig import REPO, Rig, moto_on_loopback, new_mail, new_mails, run, wait_until
from simworld.twin import imds

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

pytestmark = pytest.mark.integration

PUBLISHER = REPO / "userdata" / "scripts" / "cmc-relay-metrics"
NAMESPACE = "CMCRelayTest"
INSTANCE_ID = "i-0metrics00000000a"
REGION = "eu-west-3"  # not the rig's: the publisher can only have it from the metadata service
FACTS = {
    "mac": "0e:c2:7e:00:00:0b",
    "region": REGION,
    "role": "relay-role",
    "account_id": "123456789012",
    "ami_id": "ami-0123456789abcdef0",
    "instance_id": INSTANCE_ID,
    "instance_type": "t3.small",
    "local_ipv4": "10.0.1.10",
    "local_hostname": "ip-10-0-1-10.eu-west-3.compute.internal",
    "subnet_cidr": "10.0.1.0/24",
    "vpc_cidr": "10.0.0.0/16",
    "user_data_base64": base64.b64encode(b"#cloud-config\n{}\n").decode(),
}


@dataclass
class Publisher:
    """The command with its config, state file and AWS side; ``sample`` runs it once."""

    rig: Rig
    directory: Path
    cloudwatch: CloudWatchClient
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.directory / "metrics-state.json"

    def run(self, relay: str) -> subprocess.CompletedProcess[str]:
        config = self.directory / "metrics.json"
        config.write_text(json.dumps(publisher_config(NAMESPACE, relay)))
        command = (
            sys.executable, PUBLISHER, "--config", config, "--state", self.state,
            "--reboot-flag", self.directory / "reboot-required",
        )  # fmt: skip
        return run(*command, env=self.env)

    def sample(self, relay: str) -> dict[str, float]:
        """Publish once as ``relay``; every metric's value as moto stored it, by name."""
        self.run(relay)
        return {m.name: self.published(relay, m.name) for m in METRICS}

    def published(self, relay: str, name: str) -> float:
        now = datetime.now(UTC)
        [point] = self.cloudwatch.get_metric_statistics(
            Namespace=NAMESPACE,
            MetricName=name,
            Dimensions=[
                {"Name": RELAY_DIMENSION, "Value": relay},
                {"Name": INSTANCE_DIMENSION, "Value": INSTANCE_ID},
            ],
            StartTime=now - timedelta(hours=1),
            EndTime=now + timedelta(minutes=5),
            Period=3600,
            Statistics=["Sum", "SampleCount"],
        )["Datapoints"]
        assert point["SampleCount"] == 1, (name, point)
        return point["Sum"]

    def log_read(self) -> str:
        """The mail log up to where the publisher stopped reading (its state's offset)."""
        offset = json.loads(self.state.read_text())["offset"]
        return self.rig.postfix.maillog.read_bytes()[:offset].decode()


@contextlib.contextmanager
def metadata_service() -> Iterator[str]:
    """The IMDS stand-in on loopback (IMDSv2 tokens), as the publisher's metadata service."""
    with imds.on_loopback(imds.instance_tree(FACTS)) as url:
        yield url


@pytest.fixture
def publisher(rig: Rig, tmp_path: Path) -> Iterator[Publisher]:
    with publisher_for(rig, tmp_path) as publisher:
        yield publisher


@contextlib.contextmanager
def publisher_for(rig: Rig, tmp_path: Path) -> Iterator[Publisher]:
    """The publisher of ``rig``'s relay, with moto's CloudWatch and the metadata service."""
    with moto_on_loopback() as endpoint:
        cloudwatch = boto3.client(
            "cloudwatch",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        with metadata_service() as metadata:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "MAIL_CONFIG": str(rig.postfix.config_dir),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_ENDPOINT_URL_CLOUDWATCH": endpoint,
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata,
            }
            yield Publisher(rig, tmp_path, cloudwatch, env)


def logged(log: str, status: str) -> int:
    """The smtp client's delivery lines with ``status`` in log text."""
    lines = log.splitlines()
    return sum(
        "/smtp[" in line and f"status={status} " in line and "relay=" in line for line in lines
    )


def test_deferred_then_delivered_then_a_421_storm(rig: Rig, publisher: Publisher) -> None:
    count = 4
    rig.standin.down()
    mails = new_mails(count)
    rig.send(mails)
    wait_until(lambda: rig.postfix.queued("deferred") == count, 60, "all deferred")
    refusing = publisher.sample("while-refusing")
    assert refusing["DeferredMessages"] == count
    assert refusing["Sent"] == 0
    # Postfix retries every few seconds: the deferrals are those in what it read.
    assert refusing["Deferrals"] == logged(publisher.log_read(), "deferred") >= count

    rig.standin.up()
    rig.postfix.flush()
    rig.delivered_once(mails)
    recovered = publisher.sample("recovered")
    assert recovered["DeferredMessages"] == recovered["ActiveMessages"] == 0
    assert recovered["OldestMessageAge"] == 0
    assert recovered["Sent"] == count  # since the previous sample: each delivery once

    storm = 5
    rig.standin.reconfigure(greeting_421_sessions=storm)

    def storm_spent() -> bool:
        # A reused connection needs no greeting: mail keeps coming until new sessions have
        # met every armed 421.
        if rig.postfix.queue():
            rig.postfix.flush()
        else:
            rig.send([new_mail()])
        return rig.standin.stats().refused_sessions == storm

    wait_until(storm_spent, 120, "the 421 storm met", interval=1)

    def delivered() -> bool:
        rig.postfix.flush()  # a refused message waits for no retry timer
        return not rig.postfix.queue()

    wait_until(delivered, 60, "an empty queue", interval=1)
    stormed = publisher.sample("after-the-storm")
    assert stormed["SessionsRefused"] == storm
    assert publisher.log_read().count("refused to talk to me: 421") == storm
    assert stormed["DeferredMessages"] == 0
    assert stormed["TlsNotEstablished"] == stormed["AuthFailures"] == stormed["Bounced"] == 0

    # Nothing secret in what CloudWatch holds: names, dimensions and numbers only.
    stored = json.dumps(publisher.cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"])
    assert INSTANCE_ID in stored
    assert rig.api_key not in stored


def test_a_failed_publish_leaves_its_lines_to_the_next_and_no_mail_log_counts_zero(
    rig: Rig, publisher: Publisher
) -> None:
    mail = new_mail()
    rig.send([mail])
    rig.delivered_once([mail])
    working = publisher.env
    publisher.env = {**working, "AWS_ENDPOINT_URL_CLOUDWATCH": "http://127.0.0.1:9"}
    failed = r"exited 6\ncmc-relay-metrics: cannot use CloudWatch: EndpointConnectionError\n$"
    with pytest.raises(RuntimeError, match=failed):  # one line, on stderr
        publisher.run("unreachable")
    assert not publisher.state.exists()
    publisher.env = working
    assert publisher.sample("next")["Sent"] == 1

    run("postconf", "-c", rig.postfix.config_dir, "-e", "maillog_file=")
    result = publisher.run("no-mail-log")
    assert "maillog_file is not set" in result.stderr
    counts = [m.name for m in METRICS if m.kind == "count"]
    assert {n: publisher.published("no-mail-log", n) for n in counts} == dict.fromkeys(counts, 0)
