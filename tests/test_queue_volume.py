"""Each host's Postfix queue on an EBS volume that moves to a replacement host, and the guard
that keeps ``pulumi destroy`` from deleting queued mail, under Pulumi mocks.

What the engine does with these inputs is reasoned, not run (no engine here): a resource
replaced delete-before-replace first deletes the dependents whose replace-forcing inputs come
from it (``calculateDependentReplacements`` in pulumi's step generator). So the tests check
the inputs that reasoning rests on: the attachment's options, and which inputs of the Elastic
IP association and the balancer target come from the attachment.
"""

from __future__ import annotations

from typing import Any

import pytest

from cmc_relay.components import RelayHost
from cmc_relay.components.verification import QUEUE_COUNT, QUEUE_DISCARDED, QUEUE_KEPT
from cmc_relay.userdata.render import QUEUE_DEVICE, SCRIPT_DIR
from cmc_relay.userdata.settings import ConfigError
from tests.pulumi_harness import (
    REGION,
    SUBNETS,
    Recorder,
    bundle_of,
    driver_argv,
    payload_of,
    run_program,
    run_stack,
)

SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
HOST_SUBNETS = ["subnet-a", "subnet-b", "subnet-c"]
VOLUME = "aws:ebs/volume:Volume"
VOLUME_ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
TARGET = "aws:lb/targetGroupAttachment:TargetGroupAttachment"
LOCAL = "command:local:Command"


def relay(replicas: int = 1, **changes: Any) -> Recorder:
    args: dict[str, Any] = {
        "vpc_id": "vpc-default",
        "subnet_id": HOST_SUBNETS[0],
        "allowed_cidrs": ["10.20.0.0/16"],
        "credentials_secret_arn": SECRET_ARN,
        "replicas": replicas,
        **({"subnet_ids": HOST_SUBNETS[:replicas]} if replicas > 1 else {}),
        **changes,
    }
    return run_program(lambda: RelayHost("relay", args))  # type: ignore[arg-type]


def host_names(replicas: int) -> list[str]:
    return ["relay", *(f"relay-{index}" for index in range(1, replicas))]


@pytest.mark.parametrize("replicas", [1, 3])
def test_each_host_has_an_encrypted_queue_volume_in_its_subnets_zone(replicas: int) -> None:
    recorder = relay(replicas, queue_volume_gb=25)
    assert len(recorder.of_type(VOLUME)) == replicas
    for host, subnet in zip(host_names(replicas), HOST_SUBNETS, strict=False):
        volume = recorder.by_name(f"{host}-queue")
        assert volume.inputs["availabilityZone"] == SUBNETS[subnet]["zone"]
        assert volume.inputs["encrypted"] is True
        assert volume.inputs["type"] == "gp3"
        assert volume.inputs["size"] == 25
        assert volume.inputs["tags"]["Name"] == f"{host}-queue"
        assert volume.parent == recorder.one("cmc-relay:index:RelayHost").urn
    looked_up = [call.args["id"] for call in recorder.invoked("aws:ec2/getSubnet:getSubnet")]
    assert sorted(looked_up) == sorted(HOST_SUBNETS[:replicas])


def test_the_default_queue_volume_size() -> None:
    assert relay().by_name("relay-queue").inputs["size"] == 10


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_old_host_stops_and_lets_go_of_the_volume_before_the_new_one_takes_it(
    replicas: int,
) -> None:
    recorder = relay(replicas)
    for host in host_names(replicas):
        attachment = recorder.by_name(f"{host}-queue-attachment")
        assert attachment.inputs == {
            "deviceName": QUEUE_DEVICE,
            "volumeId": f"{host}-queue-id",
            "instanceId": f"{host}-instance-id",
            "stopInstanceBeforeDetaching": True,
        }
        # Replaced with its instance (instance_id forces a new attachment), old one first:
        # the volume is attached to one host at a time.
        assert attachment.delete_before_replace is True
        assert attachment.property_dependencies["instanceId"] == [
            recorder.by_name(f"{host}-instance").urn
        ]


def test_the_host_mounts_the_queue_volume_before_postfix_starts() -> None:
    recorder = relay()
    assert f"CMC_QUEUE_DEVICE={QUEUE_DEVICE}" in payload_of(
        recorder, recorder.by_name("relay-instance")
    )
    assert f"{SCRIPT_DIR}/cmc-relay-queue-volume" in bundle_of(recorder)


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_address_and_the_balancer_move_only_with_the_queue(replicas: int) -> None:
    """Their instance comes from the attachment: deleted before the old attachment (the old
    host leaves the balancer and gives up its address before it stops), created after the new
    one (the new host has the queue first)."""
    recorder = relay(replicas)
    for host in host_names(replicas):
        attachment = recorder.by_name(f"{host}-queue-attachment").urn
        association = recorder.by_name(f"{host}-eip-association")
        assert association.property_dependencies["instanceId"] == [attachment]
        assert association.inputs["instanceId"] == f"{host}-instance-id"
        verify = recorder.by_name(f"{host}-verify")
        assert attachment in verify.dependencies  # verified with its queue on the volume
        if replicas > 1:
            target = recorder.by_name(f"{host}-target")
            assert target.property_dependencies["targetId"] == [attachment]
            assert target.inputs["targetId"] == f"{host}-instance-id"


def guard_of(recorder: Recorder, host: str = "relay") -> Any:
    return recorder.by_name(f"{host}-queue-guard")


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_host_with_queued_mail_is_not_deleted_for_good(replicas: int) -> None:
    recorder = relay(replicas)
    for host in host_names(replicas):
        guard = guard_of(recorder, host)
        assert guard.type == LOCAL
        assert "create" not in guard.inputs  # nothing to do until the host goes
        # Never replaced: a replacement host takes the volume with its mail.
        assert "triggers" not in guard.inputs
        delete = guard.inputs["delete"]
        argv = driver_argv(delete)
        assert argv[argv.index("--instance-id") + 1] == f"{host}-instance-id"
        assert argv[argv.index("--region") + 1] == REGION
        assert argv[argv.index("--run") + 1] == QUEUE_COUNT
        assert argv[argv.index("--purpose") + 1] == "queue check"
        assert QUEUE_KEPT in delete and "discardQueueOnDestroy" in QUEUE_KEPT
        # Deleted before the host, its queue, its address and its permissions.
        for needed in ("instance", "queue-attachment", "eip-association", "ssm-agent"):
            owner = "relay" if needed == "ssm-agent" else host
            assert recorder.by_name(f"{owner}-{needed}").urn in guard.dependencies, needed


def test_discarding_the_queue_deletes_without_asking_the_host() -> None:
    guard = guard_of(relay(discard_queue_on_destroy=True))
    assert "ssm_verify" not in guard.inputs["delete"]
    assert QUEUE_DISCARDED in guard.inputs["delete"]


def test_a_draining_host_drains_before_the_guard_looks() -> None:
    recorder = relay(2)
    for host in host_names(2):
        drain = recorder.by_name(f"{host}-drain")
        assert guard_of(recorder, host).urn in drain.dependencies
        # ...and drains while it still runs: before its volume is detached (and it stopped).
        assert recorder.by_name(f"{host}-queue-attachment").urn in drain.dependencies


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"queue_volume_gb": 0}, "queue_volume_gb"),
        ({"queue_volume_gb": 2048}, "queue_volume_gb"),
        ({"queue_volume_gb": "10"}, "queue_volume_gb"),
        ({"queue_volume_gb": True}, "queue_volume_gb"),
        ({"discard_queue_on_destroy": "yes"}, "discard_queue_on_destroy"),
    ],
)
def test_bad_queue_settings_fail_before_any_resource(change: dict[str, Any], key: str) -> None:
    recorder = Recorder()
    args: dict[str, Any] = {
        "vpc_id": "vpc-default",
        "subnet_id": "subnet-a",
        "allowed_cidrs": ["10.20.0.0/16"],
        "credentials_secret_arn": SECRET_ARN,
        **change,
    }
    with pytest.raises(ConfigError) as raised:
        run_program(lambda: RelayHost("relay", args), recorder=recorder)  # type: ignore[arg-type]
    assert raised.value.name == key
    assert recorder.resources == []


def test_the_stack_config_keys_reach_the_component() -> None:
    recorder = run_stack(
        {
            "credentialsSecretArn": SECRET_ARN,
            "queueVolumeGb": 30,
            "discardQueueOnDestroy": True,
        }
    )
    assert recorder.by_name("relay-queue").inputs["size"] == 30
    assert QUEUE_DISCARDED in guard_of(recorder).inputs["delete"]
