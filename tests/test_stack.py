"""The stack program under Pulumi mocks with stack config (the consumer program: test_consumer)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from cmc_relay.components.arguments import CONFIG_KEYS
from tests.pulumi_harness import Recorder, payload_of, run_program, run_stack, strings_in

ROOT = Path(__file__).parent.parent
INSTANCE = "aws:ec2/instance:Instance"
SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
API_KEY = "stack-api-key-marker-Zt4"


def test_defaults_use_the_default_vpc() -> None:
    recorder = run_stack({"credentialsSecretArn": SECRET_ARN})
    assert recorder.one(INSTANCE).inputs["subnetId"] == "subnet-a"  # first default subnet
    group = recorder.one("aws:ec2/securityGroup:SecurityGroup")
    assert group.inputs["vpcId"] == "vpc-default"
    ingress = recorder.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert [r.inputs["cidrIpv4"] for r in ingress] == ["172.31.0.0/16"]  # the VPC's CIDR


@pytest.mark.parametrize(
    ("config", "os_name", "image"),
    [
        ({}, "debian-13", "debian-13-amd64-*"),
        ({"os": "al2023"}, "al2023", "al2023-ami-2023.*-x86_64"),
    ],
)
def test_a_stack_without_os_gets_debian_13_and_al2023_stays_available(
    config: dict[str, Any], os_name: str, image: str
) -> None:
    """The default changed from al2023: `pulumi config set os al2023` keeps the old host."""
    recorder = run_stack({"credentialsSecretArn": SECRET_ARN, **config})
    (lookup,) = recorder.invoked("aws:ec2/getAmi:getAmi")
    assert {f["name"]: f["values"] for f in lookup.args["filters"]}["name"] == [image]
    assert f"CMC_OS={os_name}" in payload_of(recorder, recorder.one(INSTANCE))


def test_every_config_key_reaches_the_component() -> None:
    recorder = run_stack(
        {
            "plan": "pro",
            "subdomain": "acme",
            "smtpPort": 2525,
            "authMode": "sasl",
            "credentialsSecretArn": SECRET_ARN,
            "subnetId": "subnet-team",
            "allowedCidrs": ["10.20.0.0/24"],
            "allowedSecurityGroupIds": ["sg-app"],
            "os": "ubuntu-24.04",
            "instanceType": "t3.medium",
            "amiId": "ami-0123456789abcdef0",
            "maxConnections": 40,
            "tlsLevel": "secure",  # with sasl the only level allowed (issue 22)
            "keepReceivedHeaders": True,
            "messageSizeLimit": 20_000_000,
            "hostName": "relay.corp.example",
            "secretRefreshMinutes": 15,
            "kmsKeyArn": (
                "arn:aws:kms:ap-northeast-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            ),
            "tags": {"team": "mail"},
        }
    )
    instance = recorder.one(INSTANCE).inputs
    assert (instance["subnetId"], instance["instanceType"]) == ("subnet-team", "t3.medium")
    assert instance["ami"] == "ami-0123456789abcdef0"
    assert instance["tags"]["team"] == "mail"
    user_data = payload_of(recorder, recorder.one(INSTANCE))
    for expected in (
        "CMC_NEXT_HOP=[acme.smtps.jp]:2525",
        "CMC_OS=ubuntu-24.04",
        "default_destination_concurrency_limit = 40",
        "smtp_tls_security_level = secure",
        "message_size_limit = 20000000",
        "myhostname = relay.corp.example",
        "OnUnitActiveSec=15min",
        "mynetworks = 127.0.0.0/8 [::1]/128 10.20.0.0/24",
    ):
        assert expected in user_data
    assert "smtp_header_checks" not in user_data  # keepReceivedHeaders
    policy = recorder.by_name("relay-read-credentials").inputs["policy"]
    assert "kms:Decrypt" in policy
    ingress = recorder.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert any(r.inputs.get("referencedSecurityGroupId") == "sg-app" for r in ingress)


def test_mail_policy_keys_reach_the_host() -> None:
    recorder = run_stack(
        {
            "credentialsSecretArn": SECRET_ARN,
            "senderDomain": "example.com",
            "rewriteDomains": ["corp.internal"],
            "allowedSenderDomains": ["example.com", "example.org"],
            "operatorEmail": "ops@example.net",
            "inboundTls": "encrypt",
        }
    )
    user_data = payload_of(recorder, recorder.one(INSTANCE))
    for expected in (
        r"(.+\.)?corp\.internal)$/ ${1}@example.com",
        r"/@(example\.com|example\.org)$/ OK",
        "ops@example.net",
        "smtpd_tls_security_level = encrypt",
    ):
        assert expected in user_data


def test_pulumi_yaml_declares_every_config_key() -> None:
    """`pulumi config` shows these descriptions; a key missing there is undocumented."""
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == set(CONFIG_KEYS.values())


def test_readme_documents_every_config_key() -> None:
    """Each key has a row in the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    assert [key for key in CONFIG_KEYS.values() if f"\n| `{key}` | " not in readme] == []


def test_stack_outputs_are_exported_and_the_api_key_stays_secret() -> None:
    recorder = run_stack({"apiUser": "cmc-user", "apiKey": API_KEY}, secret_keys=("apiKey",))
    outputs = recorder.stack_outputs
    assert set(outputs) == {
        "instanceId", "privateIp", "publicIp", "sendingIps", "smtpEndpoint", "securityGroupId",
        "smtpRelayHost", "secretArn", "verificationReport", "logGroupName", "dashboardUrl",
        "alarmTopicArn", "imageId", "latestImageId",
    }  # fmt: skip
    assert outputs["smtpEndpoint"] == "cmc-relay.internal:25"
    assert outputs["privateIp"] == "10.20.1.10"
    assert outputs["publicIp"] == "203.0.113.25"
    assert outputs["sendingIps"] == ["203.0.113.25"]
    assert not any(API_KEY in s for s in strings_in(outputs))
    assert API_KEY not in payload_of(recorder, recorder.one(INSTANCE))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"credentialsSecretArn": SECRET_ARN, "maxConnections": 11}, "(config maxConnections)"),
        ({"credentialsSecretArn": SECRET_ARN, "allowedCidrs": ["0.0.0.0/0"]}, "open relay"),
        ({"plan": "pro", "credentialsSecretArn": SECRET_ARN}, "subdomain: is required"),
        ({}, "(config credentialsSecretArn): auth_mode sasl needs credentials"),
    ],
)
def test_bad_stack_config_is_refused_with_the_key_named(
    config: dict[str, Any], message: str
) -> None:
    recorder = Recorder()
    with pytest.raises(Exception) as error:
        run_stack(config, recorder=recorder)
    assert message in str(error.value)
    assert recorder.resources == []


def test_a_mistyped_config_key_stops_the_run_before_any_invoke_or_resource() -> None:
    recorder = Recorder()
    with pytest.raises(pulumi.RunError) as error:
        run_stack({"credentialsSecretArn": SECRET_ARN, "maxConection": 5}, recorder=recorder)
    assert str(error.value).startswith(
        "config maxConection: unknown key; did you mean maxConnections? (known: "
    )
    assert (recorder.resources, recorder.calls) == ([], [])  # not even the default VPC lookup


def test_every_unknown_config_key_is_named_each_with_its_suggestion() -> None:
    with pytest.raises(pulumi.RunError) as error:
        run_stack({"credentialsSecretArn": SECRET_ARN, "tlsLvel": "may", "zzqx": "1"})
    lines = str(error.value).splitlines()
    assert lines[:2] == [
        "config tlsLvel: unknown key; did you mean tlsLevel?",
        "config zzqx: unknown key",  # nothing close: no suggestion
    ]
    assert lines[2].startswith("(known: ") and "maxConnections" in lines[2]


@pytest.mark.parametrize(
    ("namespace", "refused"),
    [("cmc-relay", True), ("aws", False), ("pulumi", False), ("cmc-relay-other", False)],
)
def test_only_the_projects_config_namespace_is_checked(
    namespace: str, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys of providers (aws:region) and the engine are not ours to know. Given through
    PULUMI_CONFIG, the CLI's channel, as the harness only sets cmc-relay: keys."""
    config = {"aws:region": "ap-northeast-1", f"{namespace}:maxConection": "5"}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    recorder = Recorder()
    if refused:  # the control: the same key in the project's namespace is caught
        with pytest.raises(pulumi.RunError, match="config maxConection: unknown key"):
            run_stack({"credentialsSecretArn": SECRET_ARN}, recorder=recorder)
    else:
        run_stack({"credentialsSecretArn": SECRET_ARN}, recorder=recorder)
    assert bool(recorder.of_type(INSTANCE)) is not refused


def test_every_key_of_config_keys_is_known() -> None:
    """Derived from CONFIG_KEYS, so a key added there is accepted without more edits."""
    config = {key: "1" for key in CONFIG_KEYS.values()} | {"zzqx": "1"}
    with pytest.raises(pulumi.RunError) as error:
        run_stack(config)
    known = ", ".join(sorted(CONFIG_KEYS.values()))
    assert str(error.value) == f"config zzqx: unknown key (known: {known})"  # zzqx alone


@pytest.fixture(scope="module")
def stack_program() -> dict[str, Any]:
    """The stack program's globals, after a run under mocks (importing it would run it)."""
    namespace: dict[str, Any] = {}
    run_program(
        lambda: namespace.update(runpy.run_path(str(ROOT / "__main__.py"))),
        {"credentialsSecretArn": SECRET_ARN},
    )
    return namespace


def test_unknown_config_keys_suggests_the_closest_known_key(stack_program: dict[str, Any]) -> None:
    check = stack_program["unknown_config_keys"]
    known = ["os", "smtpHost", "smtpPort", "maxConnections"]
    assert check(["os", "smtpPort"], known) is None
    assert check(["smtpPrt"], known) == (
        "config smtpPrt: unknown key; did you mean smtpPort? "
        "(known: maxConnections, os, smtpHost, smtpPort)"
    )
    assert check(["OS", "maxconnection", "os"], known).splitlines()[:2] == [
        "config OS: unknown key; did you mean os?",  # a case slip is a typo too
        "config maxconnection: unknown key; did you mean maxConnections?",
    ]
    assert check(["qqq"], known).startswith("config qqq: unknown key (known: ")
