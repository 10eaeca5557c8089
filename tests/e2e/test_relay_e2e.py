"""The relay host in a real AWS account: up, checks, an idempotent preview, destroy.

Opt-in: runs only with CMC_RELAY_E2E=1, AWS credentials and the pulumi CLI (see
tests/e2e/harness.py for the environment it reads); otherwise it is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import boto3
import pytest

from cmc_relay.components.ssm_verify import run_script
from tests.e2e.harness import (
    RELAY_TIMEOUT_SECONDS,
    deadline_in,
    ephemeral_stack,
    output,
    region,
    relay_test_script,
    skip_reasons,
    stack_config,
)


@pytest.fixture
def e2e_env() -> Mapping[str, str]:
    has_credentials = boto3.Session().get_credentials() is not None
    reasons = skip_reasons(os.environ, shutil.which("pulumi"), has_credentials)
    if reasons:
        pytest.skip("e2e test needs a real AWS account: " + "; ".join(reasons))
    return os.environ


def check_instance(ec2: Any, instance_id: str, public_ip: str) -> None:
    (reservation,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    (instance,) = reservation["Instances"]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    root = next(
        device
        for device in instance["BlockDeviceMappings"]
        if device["DeviceName"] == instance["RootDeviceName"]
    )
    (volume,) = ec2.describe_volumes(VolumeIds=[root["Ebs"]["VolumeId"]])["Volumes"]
    assert volume["Encrypted"] is True
    (address,) = ec2.describe_addresses(PublicIps=[public_ip])["Addresses"]
    assert address["InstanceId"] == instance_id  # the Elastic IP is attached


def test_ephemeral_stack_relays_and_is_idempotent(e2e_env: Mapping[str, str]) -> None:
    aws_region = region(e2e_env)
    with ephemeral_stack(stack_config(e2e_env)) as stack:
        result = stack.up(on_output=print, show_secrets=False)
        instance_id = output(result, "instanceId")

        check_instance(
            boto3.client("ec2", region_name=aws_region), instance_id, output(result, "publicIp")
        )
        report = json.loads(output(result, "verificationReport"))
        assert report["ok"] is True, report

        recipient = e2e_env["CMC_RELAY_E2E_RECIPIENT"]
        sender = e2e_env.get("CMC_RELAY_E2E_SENDER") or recipient
        relayed = run_script(
            boto3.client("ssm", region_name=aws_region),
            instance_id,
            relay_test_script(sender, recipient),
            "test message",
            deadline=deadline_in(RELAY_TIMEOUT_SECONDS + 60),
        )
        assert relayed.exit_code == 0, relayed.stderr
        print(relayed.stdout)

        preview = stack.preview(on_output=print)
        assert set(preview.change_summary) <= {"same"}, preview.change_summary


def test_skip_reasons_name_every_missing_prerequisite() -> None:
    """Runs everywhere: the skip message is the only thing most machines see of this test."""
    assert skip_reasons({}, None, False) == [
        "CMC_RELAY_E2E=1 is not set (the test creates real AWS resources)",
        "the pulumi CLI is not on PATH",
        "no AWS credentials were found",
    ]
    ready = {"CMC_RELAY_E2E": "1"}
    assert skip_reasons(ready, "/usr/bin/pulumi", True) == [
        "no region: set CMC_RELAY_E2E_REGION",
        "CMC_RELAY_E2E_SUBNET_ID is not set (public subnet for the host (required))",
        "CMC_RELAY_E2E_RECIPIENT is not set (where the test message goes (required))",
        "no credentials for the service: set CMC_RELAY_E2E_SECRET_ARN, or "
        "CMC_RELAY_E2E_API_USER and CMC_RELAY_E2E_API_KEY",
    ]
    complete = {
        **ready,
        "AWS_REGION": "ap-northeast-1",
        "CMC_RELAY_E2E_SUBNET_ID": "subnet-1",
        "CMC_RELAY_E2E_RECIPIENT": "ops@example.com",
        "CMC_RELAY_E2E_SECRET_ARN": "arn:aws:secretsmanager:ap-northeast-1:1:secret:x",
    }
    assert skip_reasons(complete, "/usr/bin/pulumi", True) == []


def test_stack_config_is_ephemeral_and_keeps_the_api_key_secret() -> None:
    config = stack_config(
        {
            "AWS_REGION": "ap-northeast-1",
            "CMC_RELAY_E2E_SUBNET_ID": "subnet-1",
            "CMC_RELAY_E2E_API_USER": "user",
            "CMC_RELAY_E2E_API_KEY": "key",
            "CMC_RELAY_E2E_SMTP_HOST": "sandbox.smtps.jp",
        }
    )
    assert config["cmc-relay:ephemeral"].value == "true"
    assert config["cmc-relay:verification"].value == "ssm"
    assert config["cmc-relay:apiKey"].secret is True
    assert config["cmc-relay:smtpHost"].value == "sandbox.smtps.jp"
    assert config["aws:region"].value == "ap-northeast-1"
