"""Post-boot verification under Pulumi mocks: which command runs where, after what, and when.

The commands themselves do not run here (no provider plugin): these tests check the inputs and
options the engine would get. The SSM driver is tested in test_ssm_driver.py.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmc_relay.components import TYPE_TOKEN, RelayHost
from cmc_relay.components.args import validate_args
from cmc_relay.components.verification import (
    HOST_SCRIPT,
    TIMEOUT_SECONDS,
    apply_script,
    verify_then_forget_key,
)
from cmc_relay.userdata.os_profiles import OS_PROFILES
from cmc_relay.userdata.render import BundleStore, cloud_config
from cmc_relay.userdata.settings import OS_NAMES, ConfigError, OsName, RelaySettings
from tests.pulumi_harness import (
    REGION,
    VERIFIER_REPORT,
    Recorder,
    Registered,
    driver_argv,
    host_commands,
    is_secret,
    run_program,
    run_stack,
    stored_bundle,
    strings_in,
    user_data_of,
)

ROOT = Path(__file__).parent.parent
SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVlcmlmaWNhdGlvbi10ZXN0LWtleQ deployer@ci"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nprivate-marker-Kq7\n"
DEPLOYERS = "198.51.100.0/24"

LOCAL = "command:local:Command"
REMOTE = "command:remote:Command"
INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SSH_ARGS = {
    "verification": "ssh",
    "ssh_public_key": PUBLIC_KEY,
    "ssh_private_key": PRIVATE_KEY,
    "ssh_allowed_cidrs": [DEPLOYERS],
}


def relay(**changes: Any) -> Recorder:
    args = {
        "vpc_id": "vpc-team",
        "subnet_id": "subnet-team",
        "allowed_cidrs": ["10.20.0.0/16"],
        "credentials_secret_arn": SECRET_ARN,
        **changes,
    }
    present = {k: v for k, v in args.items() if v is not None}
    return run_program(lambda: RelayHost("relay", present))  # type: ignore[arg-type]


def urn(recorder: Recorder, type_token: str) -> str:
    return recorder.one(type_token).urn


def user_data(recorder: Recorder) -> str:
    return user_data_of(recorder.one(INSTANCE))


def secret_value(value: Any) -> Any:
    """The value inside the engine's secret wrapper; fails if the value is not marked secret."""
    assert is_secret(value), value
    return value["value"]


def assert_runs_after_the_host_is_reachable(recorder: Recorder, command: Registered) -> None:
    component = recorder.one(TYPE_TOKEN)
    assert command.parent == component.urn
    for needed in (INSTANCE, "aws:ec2/eipAssociation:EipAssociation"):
        assert urn(recorder, needed) in command.dependencies, needed
    # Systems Manager access; the secret the host reads at boot; publishing metrics and
    # shipping the mail log (the instance itself waits for its bundle).
    for policy in ("relay-ssm-agent", "relay-read-credentials", "relay-monitoring"):
        assert recorder.by_name(policy).urn in command.dependencies, policy
    assert command.deleted_with == urn(recorder, INSTANCE)
    assert command.inputs["addPreviousOutputInEnv"] is False
    assert "environment" not in command.inputs
    # Again for a new host or a new bundle (applied in place first), not for anything else.
    assert command.inputs["triggers"] == ["relay-instance-id", bundle_sha256(recorder)]


def bundle_sha256(recorder: Recorder) -> str:
    data = base64.b64decode(stored_bundle(recorder).inputs["contentBase64"])
    return hashlib.sha256(data).hexdigest()


def verifier_commands(recorder: Recorder) -> list[Registered]:
    """The host commands but the queue guard, which every host has (tests/test_queue_volume)."""
    return [c for c in host_commands(recorder) if not c.name.endswith("-queue-guard")]


def test_ssm_is_the_default_and_runs_the_driver_locally() -> None:
    recorder = relay()
    command = recorder.by_name("relay-verify")
    assert command.type == LOCAL
    assert [c.name for c in verifier_commands(recorder)] == ["relay-apply", "relay-verify"]
    assert recorder.of_type(REMOTE) == []
    assert_runs_after_the_host_is_reachable(recorder, command)
    assert driver_argv(command.inputs["create"]) == [
        "-m", "cmc_relay.components.ssm_verify",
        "--instance-id", "relay-instance-id",
        "--region", REGION,
        "--timeout", str(TIMEOUT_SECONDS),
    ]  # fmt: skip
    (region_lookup,) = recorder.invoked("aws:index/getRegion:getRegion")
    assert region_lookup.args == {}  # the provider's region: where the instance is


def test_ssm_mode_opens_no_port_and_authorizes_no_key() -> None:
    recorder = relay()
    assert {r.inputs["fromPort"] for r in recorder.of_type(INGRESS)} == {25}
    assert "ssh_authorized_keys" not in yaml.safe_load(user_data(recorder))


def test_the_report_becomes_the_component_output() -> None:
    recorder = relay()
    outputs = recorder.outputs[urn(recorder, TYPE_TOKEN)]
    assert outputs["verification_report"] == VERIFIER_REPORT


def test_triggers_follow_the_payload_only() -> None:
    first = relay().by_name("relay-verify").inputs["triggers"]
    again = relay().by_name("relay-verify").inputs["triggers"]
    changed = relay(max_connections=5).by_name("relay-verify").inputs["triggers"]
    assert first == again  # a second `up` with the same payload does not verify again
    assert first[0] == changed[0] and first[1] != changed[1]


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_ssh_mode_connects_as_the_default_user_with_a_secret_key(os_name: OsName) -> None:
    recorder = relay(os=os_name, **SSH_ARGS)
    assert verifier_commands(recorder) == []
    ready = recorder.by_name("relay-ssh-ready")
    verify = recorder.by_name("relay-verify")
    apply = recorder.by_name("relay-apply")
    assert ready.type == verify.type == apply.type == REMOTE
    for command in (ready, verify, apply):
        assert_runs_after_the_host_is_reachable(recorder, command)
        connection = secret_value(command.inputs["connection"])
        assert connection["user"] == OS_PROFILES[os_name].login_user
        assert connection["host"] == "203.0.113.25"  # the Elastic IP
        assert connection["privateKey"] == PRIVATE_KEY
        assert connection["dialErrorLimit"] == -1  # keep dialling while the host boots
        assert command.create_timeout == f"{TIMEOUT_SECONDS // 60}m"
    assert ready.urn in verify.dependencies and apply.urn in verify.dependencies
    keys = f"/home/{OS_PROFILES[os_name].login_user}/.ssh/authorized_keys"
    body = verify_then_forget_key(keys, PUBLIC_KEY)
    assert body.startswith(f"{HOST_SCRIPT} && ")
    assert verify.inputs["create"] == f"sudo sh -c {shlex.quote(body)}"
    sha256 = bundle_sha256(recorder)
    assert apply.inputs["create"] == f"sudo sh -c {shlex.quote(apply_script(sha256))}"
    assert apply.inputs["create"].endswith(f"/usr/local/sbin/cmc-relay-apply {sha256}'")
    outputs = recorder.outputs[urn(recorder, TYPE_TOKEN)]
    assert outputs["verification_report"] == VERIFIER_REPORT


@pytest.mark.parametrize(
    ("check", "kept"), [("true", ["other-key"]), ("false", [PUBLIC_KEY, "other-key"])]
)
def test_ssh_verification_takes_its_key_off_the_host_once_it_passed(
    tmp_path: Path, check: str, kept: list[str]
) -> None:
    keys = tmp_path / "authorized_keys"
    keys.write_text(f"{PUBLIC_KEY}\nother-key\n")
    keys.chmod(0o600)
    result = subprocess.run(["sh", "-c", verify_then_forget_key(str(keys), PUBLIC_KEY, check)])
    assert result.returncode == (0 if check == "true" else 1)  # the verdict is the check's
    assert keys.read_text().splitlines() == kept
    assert keys.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["authorized_keys"]


def test_ssh_mode_opens_port_22_to_the_given_networks_only() -> None:
    recorder = relay(**{**SSH_ARGS, "ssh_allowed_cidrs": [DEPLOYERS, "2001:db8::/48"]})
    ssh = [r for r in recorder.of_type(INGRESS) if r.inputs["fromPort"] == 22]
    assert {r.inputs["toPort"] for r in ssh} == {22}
    assert {r.inputs.get("cidrIpv4") or r.inputs["cidrIpv6"] for r in ssh} == {
        DEPLOYERS,
        "2001:db8::/48",
    }
    # Once, for the bundle, the dashboard and the recovery alarm, whatever the verification.
    assert len(recorder.invoked("aws:index/getRegion:getRegion")) == 1


def test_ssh_mode_authorizes_the_public_key_and_keeps_the_private_key_out() -> None:
    recorder = relay(**SSH_ARGS)
    assert yaml.safe_load(user_data(recorder))["ssh_authorized_keys"] == [PUBLIC_KEY]
    for resource in recorder.resources:
        if resource.type != REMOTE:  # where it is, it is marked secret (checked above)
            assert not any("private-marker" in s for s in strings_in(resource.inputs))
    outputs = recorder.outputs[urn(recorder, TYPE_TOKEN)]
    assert not any("private-marker" in s for s in strings_in(outputs))


def test_none_creates_no_command() -> None:
    recorder = relay(verification="none")
    assert verifier_commands(recorder) == recorder.of_type(REMOTE) == []
    assert recorder.outputs[urn(recorder, TYPE_TOKEN)].get("verification_report") is None
    # Once, for the bundle, the dashboard and the recovery alarm, whatever the verification.
    assert len(recorder.invoked("aws:index/getRegion:getRegion")) == 1


def test_ephemeral_secret_is_deleted_without_a_recovery_window() -> None:
    kept = relay(credentials_secret_arn=None, api_user="cmc-user", api_key="k")
    gone = relay(credentials_secret_arn=None, api_user="cmc-user", api_key="k", ephemeral=True)
    secret = "aws:secretsmanager/secret:Secret"
    assert "recoveryWindowInDays" not in kept.one(secret).inputs  # AWS's 30 days
    assert gone.one(secret).inputs["recoveryWindowInDays"] == 0


def test_cloud_config_has_no_key_unless_given() -> None:
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",))
    store = BundleStore("relay-payload-0a1b2c3", "ap-northeast-1")
    assert "ssh_authorized_keys" not in cloud_config(settings, store=store)
    with_key = cloud_config(settings, PUBLIC_KEY, store=store)
    assert with_key["ssh_authorized_keys"] == [PUBLIC_KEY]


BASE = {
    "vpc_id": "vpc-1",
    "subnet_id": "subnet-1",
    "allowed_cidrs": ["10.0.0.0/16"],
    "credentials_secret_arn": SECRET_ARN,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"verification": "http"}, "verification: got 'http'; allowed: ssm, ssh, none"),
        (
            {**SSH_ARGS, "ssh_public_key": None},
            "ssh_public_key (config sshPublicKey): is required with verification ssh",
        ),
        (
            {**SSH_ARGS, "ssh_private_key": None},
            "ssh_private_key (config sshPrivateKey): is required with verification ssh",
        ),
        (
            {**SSH_ARGS, "ssh_allowed_cidrs": None},
            "ssh_allowed_cidrs (config sshAllowedCidrs): is required with verification ssh",
        ),
        (
            {**SSH_ARGS, "ssh_allowed_cidrs": ["0.0.0.0/0"]},
            "ssh_allowed_cidrs (config sshAllowedCidrs): 0.0.0.0/0 would open SSH to the whole",
        ),
        (
            {**SSH_ARGS, "ssh_public_key": "-----BEGIN OPENSSH PRIVATE KEY-----"},
            "ssh_public_key (config sshPublicKey): must be one OpenSSH public key line",
        ),
        (
            {"ssh_allowed_cidrs": [DEPLOYERS]},
            "ssh_allowed_cidrs (config sshAllowedCidrs): only applies to verification ssh",
        ),
        (
            {"verification": "none", "ssh_public_key": PUBLIC_KEY},
            "ssh_public_key (config sshPublicKey): only applies to verification ssh; it is none",
        ),
        ({"ephemeral": "yes"}, "ephemeral: must be true or false; got 'yes'"),
    ],
)
def test_bad_verification_arguments_are_refused(changes: dict[str, Any], message: str) -> None:
    args = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        validate_args(args)
    assert message in str(error.value)


def test_stack_config_reaches_ssh_verification() -> None:
    recorder = run_stack(
        {
            "credentialsSecretArn": SECRET_ARN,
            "verification": "ssh",
            "sshPublicKey": PUBLIC_KEY,
            "sshPrivateKey": PRIVATE_KEY,
            "sshAllowedCidrs": [DEPLOYERS],
            "ephemeral": True,
        },
        secret_keys=("sshPrivateKey",),
    )
    verify = recorder.by_name("relay-verify")
    assert secret_value(verify.inputs["connection"])["privateKey"] == PRIVATE_KEY
    assert recorder.stack_outputs["verificationReport"] == VERIFIER_REPORT
    assert not any("private-marker" in s for s in strings_in(recorder.stack_outputs))


def test_stack_config_names_the_missing_ssh_key() -> None:
    with pytest.raises(Exception, match=r"\(config sshPublicKey\): is required"):
        run_stack({"credentialsSecretArn": SECRET_ARN, "verification": "ssh"})


def test_pulumi_yaml_declares_every_new_key() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    new_keys = ("verification", "sshPublicKey", "sshPrivateKey", "sshAllowedCidrs", "ephemeral")
    assert set(new_keys) <= set(declared)
    assert declared["sshPrivateKey"]["secret"] is True
    assert declared["ephemeral"]["type"] == "boolean"
