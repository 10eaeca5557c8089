"""Every IAM policy document the component creates: least privilege, and a real IAM linter's
verdict (parliament), for the main configurations. Under mocks: the documents are collected
from what the component registers, so a policy added later is linted too."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from typing import Any

import pytest
from parliament import analyze_policy_string

from cmc_relay.components.policies import (
    alarm_topic_key_policy,
    secret_read_policy,
    ssm_agent_policy,
)
from tests.pulumi_harness import ACCOUNT, REGION, Recorder, strings_in
from tests.test_component import KMS_KEY, SECRET_ARN, relay

CERTIFICATE_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:relay/inbound-AbCdEf"
ALARM_EMAIL = "ops@example.com"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBvbGljeS10ZXN0LWtleQ deployer@ci"

# The main configurations: each adds policies or statements the others lack.
VARIANTS: dict[str, dict[str, Any]] = {
    "secret-arn": {},
    "created-secret": {
        "credentials_secret_arn": None,
        "api_user": "cmc-api-user",
        "api_key": "api-key-marker",
    },
    "customer-key": {"kms_key_arn": KMS_KEY},
    "ip-auth-inbound-certificate": {
        "credentials_secret_arn": None,
        "plan": "pro",
        "subdomain": "acme",
        "auth_mode": "ip",
        "inbound_tls_secret_arn": CERTIFICATE_ARN,
    },
    "alarm-email": {"alarm_email": ALARM_EMAIL},
    "ssh": {
        "verification": "ssh",
        "ssh_public_key": PUBLIC_KEY,
        "ssh_private_key": "private-marker",
        "ssh_allowed_cidrs": ["198.51.100.0/24"],
    },
    "replicas-nat": {
        "replicas": 2,
        "subnet_ids": ["subnet-team", "subnet-team-c"],
        "egress": "nat",
        "nat_gateway_ips": ["198.51.100.7"],
        "max_connections": 5,
        "drain_on_delete": True,
    },
}

# Parliament reads every document as an identity policy. The findings we accept, by the
# resource whose document it is and the issue, each with its reason.
ACCEPTED: dict[tuple[str, str], str] = {
    ("relay-role", "MALFORMED"): (
        "'Statement contains neither Resource nor NotResource': a trust policy has none; its "
        "Principal (ec2.amazonaws.com) is what it names"
    ),
    ("relay-alarms", "RESOURCE_STAR"): (
        "a key policy's Resource '*' is the key it is attached to, and nothing else"
    ),
    ("relay-alarms", "PERMISSIONS_MANAGEMENT_ACTIONS"): (
        "kms:* for the account's root on this key is AWS's default key policy: it leaves the "
        "key's administration to the account's IAM policies; without it nobody could manage "
        "or delete the key"
    ),
}

PARAMETER_STORE_READS = ("ssm:getparameter", "ssm:getparameters", "ssm:getparametersbypath")


def policy_documents(recorder: Recorder) -> Iterator[tuple[str, dict[str, Any]]]:
    """(resource name, document) for every policy document in any registered input."""
    for resource in recorder.resources:
        for text in strings_in(resource.inputs):
            try:
                document = json.loads(text)
            except ValueError:
                continue
            if isinstance(document, dict) and "Statement" in document:
                yield resource.name, document


def allowed_actions(document: dict[str, Any]) -> Iterator[str]:
    for statement in document["Statement"]:
        if statement["Effect"] == "Allow":
            actions = statement.get("Action", [])
            yield from [actions] if isinstance(actions, str) else actions


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, Recorder]:
    return request.param, relay(**VARIANTS[request.param])


def test_each_variant_creates_the_policies_it_should(variant: tuple[str, Recorder]) -> None:
    name, recorder = variant
    kinds = {resource for resource, _ in policy_documents(recorder)}
    assert {"relay-role", "relay-ssm-agent", "relay-read-payload", "relay-monitoring"} <= kinds
    assert "relay-payload" in kinds  # the bucket policy
    assert "relay-read-credentials" in kinds  # every variant reads a secret
    assert ("relay-alarms" in kinds) == (name == "alarm-email")  # the topic's key


def test_no_managed_policy_is_attached(variant: tuple[str, Recorder]) -> None:
    _, recorder = variant
    assert recorder.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") == []
    assert "managedPolicyArns" not in recorder.one("aws:iam/role:Role").inputs
    assert not any("AmazonSSMManagedInstanceCore" in s for s in strings_in(recorder.resources))


def test_no_policy_lets_the_host_read_parameter_store(variant: tuple[str, Recorder]) -> None:
    _, recorder = variant
    for resource, document in policy_documents(recorder):
        for pattern in allowed_actions(document):
            reads = [a for a in PARAMETER_STORE_READS if fnmatch.fnmatch(a, pattern.lower())]
            assert not reads, f"{resource} allows {pattern}"


def test_parliament_finds_nothing_unexplained(variant: tuple[str, Recorder]) -> None:
    _, recorder = variant
    documents = list(policy_documents(recorder))
    assert documents
    for resource, document in documents:
        findings = analyze_policy_string(json.dumps(document), include_community_auditors=True)
        unexplained = [
            (f.issue, f.detail) for f in findings.findings if (resource, f.issue) not in ACCEPTED
        ]
        assert not unexplained, f"{resource}: {unexplained}"


def test_the_ssm_agent_policy_is_what_run_command_needs_and_no_more() -> None:
    actions = set(allowed_actions(ssm_agent_policy()))
    assert "ssm:UpdateInstanceInformation" in actions  # registration: the verifier waits on it
    assert {"ec2messages:GetMessages", "ec2messages:SendReply"} <= actions  # Run Command
    assert all(not a.endswith("*") for a in actions)
    services = {action.split(":")[0] for action in actions}
    assert services == {"ssm", "ec2messages", "ssmmessages"}
    assert {a for a in actions if a.startswith("ssm:")} == {
        "ssm:UpdateInstanceInformation",
        "ssm:ListInstanceAssociations",
    }


def test_cloudwatch_may_use_the_topic_key_for_this_relays_alarms_only() -> None:
    policy = alarm_topic_key_policy("aws", ACCOUNT, REGION, "relay-")
    (publish,) = [s for s in policy["Statement"] if s["Sid"] == "CloudWatchAlarmsPublish"]
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert publish["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:relay-*"},
    }


def test_secrets_are_readable_one_arn_at_a_time() -> None:
    policy = secret_read_policy(SECRET_ARN, KMS_KEY, CERTIFICATE_ARN)
    assert all(statement["Resource"] != "*" for statement in policy["Statement"])
