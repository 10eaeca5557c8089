"""Plan tests: the stack program before and after one config change, under mocks, each changed
input classified by the providers' replace rules (tests/plan.py). Each key's outcome is the
one the README's configuration table states: in place (the hosts stay; their apply step runs
the new bundle, then the verifier), the hosts untouched (a cloud-side setting), replaced, or
updated with the instance stopped and started."""

from __future__ import annotations

from typing import Any

import pytest

from cmc_relay.userdata import render
from tests.plan import Action, plan, summary
from tests.pulumi_harness import Recorder, run_stack

SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
BASE: dict[str, Any] = {"credentialsSecretArn": SECRET_ARN}
INSTANCE = "relay-instance:Instance"
APPLY = "relay-apply:Command"
VERIFY = "relay-verify:Command"

# A change the running hosts take in place: a new bundle, applied and verified again.
IN_PLACE: dict[str, Any] = {
    "allowedCidrs": ["172.31.0.0/16", "10.9.0.0/16"],
    "maxConnections": 5,
    "tlsLevel": "encrypt",
    "messageSizeLimit": 20_000_000,
    "secretRefreshMinutes": 15,
    "inboundTls": "encrypt",
    "senderDomain": "mail.example.com",
    "allowedSenderDomains": ["example.com"],
    "operatorEmail": "ops@example.com",
    "smtpPort": 2525,
    "plan": "standard",
    "credentialsSecretArn": SECRET_ARN.replace("cmc/api", "cmc/other"),
    "metricsNamespace": "Mail/Relay",
    "smtpHost": "relay.example.net",
    "rewriteDomains": ["corp.internal"],
    "inboundTlsSecretArn": SECRET_ARN.replace("cmc/api", "cmc/cert"),
    "clientMessageRateLimit": 200,
    "clientRecipientRateLimit": 900,
    "clientConnectionLimit": 5,
    "keepReceivedHeaders": True,
}
# Settings of cloud resources only: the hosts are not touched, nothing runs on them.
HOSTS_UNTOUCHED: dict[str, Any] = {
    "alarmDeferredThreshold": 500,
    "alarmOldestMessageMinutes": 90,
    "alarmBouncedThreshold": 9,
    "alarmRefusedThreshold": 99,
    "logRetentionDays": 7,
    "alarmEmail": "ops@example.com",
    "alarmSentThreshold": 100,
    "alarmQueueFreePercent": 40,
    "alarmRebootRequiredDays": 1,
}
# A new machine: the image, the subnet, what the user data holds (the host's name, whether it
# drains before deletion, an SSH key).
REPLACES: dict[str, Any] = {
    "os": "al2023",
    "amiId": "ami-0123456789abcdef0",
    "subnetId": "subnet-c",
    "hostName": "relay.corp.example",
    "drainOnDelete": True,
}


# What a key needs set in both stacks to be valid at all.
NEEDS: dict[str, dict[str, Any]] = {
    # The weaker levels are for IP authentication only (the API key goes to verified peers).
    "tlsLevel": {"authMode": "ip", "plan": "pro", "subdomain": "acme"},
    "operatorEmail": {"senderDomain": "mail.example.com"},
    "rewriteDomains": {"senderDomain": "mail.example.com"},
}


def stacks(change: dict[str, Any]) -> tuple[Recorder, Recorder]:
    needs = {k: v for key in change for k, v in NEEDS.get(key, {}).items()}
    # IP authentication takes no credentials.
    base = {**({} if needs.get("authMode") == "ip" else BASE), **needs}
    return run_stack(base), run_stack({**base, **change})


def test_no_change_is_no_step() -> None:
    assert summary(plan(*stacks({}))) == {}


@pytest.mark.parametrize("key", sorted(IN_PLACE))
def test_a_change_of_this_key_reaches_the_hosts_in_place(key: str) -> None:
    steps = plan(*stacks({key: IN_PLACE[key]}))
    assert steps[INSTANCE].action is Action.SAME, steps[INSTANCE].changed
    assert steps["relay-eip:Eip"].action is Action.SAME  # the same addresses
    # The new bundle stored, the pointer moved, the host's apply and verifier run again.
    assert steps[APPLY].action is Action.REPLACE and steps[VERIFY].action is Action.REPLACE
    assert steps["relay-payload-pointer:BucketObjectv2"].action is Action.UPDATE
    assert steps["relay-payload:BucketObjectv2"].action is Action.REPLACE


@pytest.mark.parametrize("key", sorted(HOSTS_UNTOUCHED))
def test_a_change_of_this_key_leaves_the_hosts_alone(key: str) -> None:
    steps = plan(*stacks({key: HOSTS_UNTOUCHED[key]}))
    touched = summary(steps)
    assert touched  # the change does something
    for name in (INSTANCE, APPLY, VERIFY, "relay-payload:BucketObjectv2"):
        assert steps[name].action is Action.SAME, touched


@pytest.mark.parametrize("key", sorted(REPLACES))
def test_a_change_of_this_key_replaces_the_hosts(key: str) -> None:
    steps = plan(*stacks({key: REPLACES[key]}))
    assert steps[INSTANCE].action is Action.REPLACE, steps[INSTANCE].changed
    # A new host: verified again, its address moved to it.
    assert steps[VERIFY].action is Action.REPLACE
    assert steps["relay-eip-association:EipAssociation"].action is Action.REPLACE


def test_the_instance_type_is_an_update_with_a_stop_and_start() -> None:
    steps = plan(*stacks({"instanceType": "t3.medium"}))
    assert steps[INSTANCE].action is Action.STOP_START
    assert steps[INSTANCE].changed == {"instanceType"}
    assert steps[APPLY].action is steps[VERIFY].action is Action.SAME


def test_a_new_version_of_an_on_host_script_is_applied_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A component upgrade that changes what the bundle ships (here the verifier) reaches the
    running hosts in place; one that changes the bootstrap replaces them."""
    before = run_stack(BASE)
    shipped = render.script

    def upgraded(name: str) -> str:
        return shipped(name) + ("\n# upgraded\n" if name == "cmc-relay-verify" else "")

    monkeypatch.setattr(render, "script", upgraded)
    steps = plan(before, run_stack(BASE))
    assert steps[INSTANCE].action is Action.SAME
    assert steps[APPLY].action is Action.REPLACE

    def new_bootstrap(name: str) -> str:
        return shipped(name) + ("\n# upgraded\n" if name == "cmc-relay-bootstrap" else "")

    monkeypatch.setattr(render, "script", new_bootstrap)
    assert plan(before, run_stack(BASE))[INSTANCE].action is Action.REPLACE


def test_the_plan_can_tell_a_replacement_from_an_update() -> None:
    """The classifier itself: user data changes replace only with replace-on-change set."""
    before, after = stacks({"hostName": "relay.corp.example"})
    for recorder in (before, after):
        for resource in recorder.resources:
            if resource.name == "relay-instance":
                resource.inputs["userDataReplaceOnChange"] = False
    assert plan(before, after)[INSTANCE].action is Action.STOP_START
