"""The image stays until the user moves it: a stack run again months later, under Pulumi mocks.

No engine runs here. The harness stands in for the stack's state with the previous run's
registrations and applies ``ignore_changes`` as the engine does (``apply_ignore_changes``):
for a resource already in the state, an ignored input keeps its old value, for an update as
for a replacement. What the provider then does with an input that differs (update or replace)
is not modelled: these tests show which inputs differ, and that is none for a newer image.
"""

from __future__ import annotations

from typing import Any

import pytest

from cmc_relay.components import RelayHost
from cmc_relay.components.image import (
    check_image_refresh,
    image_pin_name,
    pin_command,
    pinned_image,
)
from cmc_relay.userdata.settings import ConfigError
from tests.pulumi_harness import (
    LOOKED_UP_AMI,
    NEWER_AMI,
    Recorder,
    apply_ignore_changes,
    run_program,
    run_stack,
    strings_in,
)

SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
RUNNING_AMI = "ami-0cccccccccccccccc"  # what an existing stack's hosts run
API_KEY = "pin-api-key-marker-Hq3"
INSTANCE = "aws:ec2/instance:Instance"
LOCAL = "command:local:Command"
STACK = {"credentialsSecretArn": SECRET_ARN}


def later(config: dict[str, Any], before: Recorder, published: str = NEWER_AMI) -> Recorder:
    """The same stack run again, with ``before`` as its state and ``published`` the newest
    official image by then."""
    return run_stack(config, recorder=Recorder(latest_ami=published, state=before))


def amis(recorder: Recorder) -> list[str]:
    return [instance.inputs["ami"] for instance in recorder.of_type(INSTANCE)]


def pins(recorder: Recorder) -> list[str]:
    return [r.name for r in recorder.of_type(LOCAL) if "-image-" in r.name]


def changed(before: Recorder, after: Recorder) -> dict[str, list[str]]:
    """Per resource (type and name), what the engine would see differ: the inputs that
    changed, or ["created"] / ["deleted"]."""
    old = {(r.type, r.name): r.inputs for r in before.resources}
    new = {(r.type, r.name): r.inputs for r in after.resources}
    diff = {f"{k[0]} {k[1]}": ["created"] for k in new.keys() - old.keys()}
    diff |= {f"{k[0]} {k[1]}": ["deleted"] for k in old.keys() - new.keys()}
    for key in old.keys() & new.keys():
        before_inputs, after_inputs = old[key], new[key]
        keys = before_inputs.keys() | after_inputs.keys()
        differ = sorted(p for p in keys if before_inputs.get(p) != after_inputs.get(p))
        if differ:
            diff[f"{key[0]} {key[1]}"] = differ
    return diff


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_newer_published_image_changes_nothing(replicas: int) -> None:
    config: dict[str, Any] = dict(STACK)
    if replicas > 1:
        config |= {"replicas": replicas, "subnetIds": ["subnet-a", "subnet-b", "subnet-c"]}
    first = run_stack(config)
    assert amis(first) == [LOOKED_UP_AMI] * replicas
    second = later(config, first)
    assert changed(first, second) == {}
    assert amis(second) == [LOOKED_UP_AMI] * replicas
    assert second.stack_outputs["imageId"] == LOOKED_UP_AMI
    assert second.stack_outputs["latestImageId"] == NEWER_AMI  # the operator sees it is out


def test_the_pin_holds_the_image_in_an_ignored_input() -> None:
    first = run_stack(STACK)
    (pin,) = [r for r in first.of_type(LOCAL) if r.name in pins(first)]
    assert pin.name == "relay-image-debian-13-x86_64"
    assert pin.inputs["create"] == f"echo {LOOKED_UP_AMI}"
    assert pin.ignore_changes == ["create"]
    assert "triggers" not in pin.inputs  # a replacement would keep the ignored old image
    # What the program asks for months later differs only in that ignored input...
    asked = run_stack(STACK, recorder=Recorder(latest_ami=NEWER_AMI)).by_name(pin.name)
    assert asked.inputs == {"create": f"echo {NEWER_AMI}"}
    # ...so the engine goes on with the pin as it is.
    assert later(STACK, first).by_name(pin.name).inputs == pin.inputs


@pytest.mark.parametrize(
    ("change", "pin"),
    [
        ({"os": "debian-12"}, "relay-image-debian-12-x86_64"),
        ({"instanceType": "t4g.small"}, "relay-image-debian-13-arm64"),
        ({"imageRefresh": "2027-01-15"}, "relay-image-debian-13-x86_64-2027-01-15"),
    ],
)
def test_what_the_image_depends_on_re_pins_to_the_newest(change: dict[str, Any], pin: str) -> None:
    first = run_stack(STACK)
    second = later(STACK | change, first)
    assert pins(second) == [pin]  # a new pin: nothing of the old one's state is kept
    assert amis(second) == [NEWER_AMI]
    assert second.stack_outputs["imageId"] == NEWER_AMI
    assert "ami" in changed(first, second)[f"{INSTANCE} relay-instance"]


def test_a_refreshed_image_then_stays_too() -> None:
    refreshed = STACK | {"imageRefresh": "2027-01-15"}
    second = later(refreshed, run_stack(STACK))
    third = later(refreshed, second, published="ami-0dddddddddddddddd")
    assert changed(second, third) == {}
    assert amis(third) == [NEWER_AMI]


def test_ami_id_wins_and_seeds_the_pin_so_an_upgrade_keeps_running_hosts() -> None:
    """The upgrade path: set amiId to the running image, pulumi up, then remove amiId."""
    pinned = run_stack(STACK | {"amiId": RUNNING_AMI})
    assert amis(pinned) == [RUNNING_AMI]
    assert pinned.invoked("aws:ec2/getAmi:getAmi") == []
    assert pinned.stack_outputs["imageId"] == RUNNING_AMI
    assert pinned.stack_outputs["latestImageId"] is None
    released = later(STACK, pinned)
    assert amis(released) == [RUNNING_AMI]
    assert changed(pinned, released) == {}
    assert released.stack_outputs["latestImageId"] == NEWER_AMI


def test_without_the_seed_the_first_run_takes_the_newest_image() -> None:
    """What the CHANGELOG warns of: an existing stack that skips the amiId step."""
    upgraded = run_stack(STACK, recorder=Recorder(latest_ami=NEWER_AMI))
    assert amis(upgraded) == [NEWER_AMI]


def test_the_pin_holds_no_secret_and_needs_no_verification() -> None:
    recorder = run_stack(
        {"apiUser": "cmc-api-user", "apiKey": API_KEY, "verification": "none"},
        secret_keys=("apiKey",),
    )
    (name,) = pins(recorder)
    pin = recorder.by_name(name)
    assert pin.inputs == {"create": f"echo {LOOKED_UP_AMI}"}
    assert pin.dependencies == []  # it waits for nothing, runs nothing but echo
    assert not any(API_KEY in text for text in strings_in(pin.inputs))
    assert amis(recorder) == [LOOKED_UP_AMI]


def test_apply_ignore_changes_keeps_old_values_and_drops_new_ones_without_one() -> None:
    kept = apply_ignore_changes(
        {"create": "echo new", "update": "x", "delete": "y"},
        {"create": "echo old", "delete": "z"},
        ["create", "update"],
    )
    assert kept == {"create": "echo old", "delete": "y"}


def test_pin_helpers() -> None:
    assert image_pin_name("relay", "al2023", "arm64", None) == "relay-image-al2023-arm64"
    assert image_pin_name("r", "debian-13", "x86_64", "v2") == "r-image-debian-13-x86_64-v2"
    assert pinned_image(pin_command(LOOKED_UP_AMI)) == LOOKED_UP_AMI
    assert pinned_image(pin_command(LOOKED_UP_AMI) + "\n") == LOOKED_UP_AMI
    with pytest.raises(ValueError, match="not an AMI id"):
        pin_command("ami-1; rm -rf ~")
    with pytest.raises(ValueError, match="the image pin holds"):
        pinned_image("true")


@pytest.mark.parametrize("refresh", ["", "2027 01", "-x", "a" * 41, "über", 2027])
def test_a_bad_image_refresh_is_refused_before_any_resource(refresh: object) -> None:
    with pytest.raises(ConfigError, match=r"image_refresh \(config imageRefresh\)"):
        check_image_refresh(refresh)
    recorder = Recorder()
    args = {
        "vpc_id": "vpc-team",
        "subnet_id": "subnet-team",
        "allowed_cidrs": ["10.20.0.0/16"],
        "credentials_secret_arn": SECRET_ARN,
        "image_refresh": refresh,
    }
    with pytest.raises(ConfigError, match="imageRefresh"):
        run_program(lambda: RelayHost("relay", args), recorder=recorder)  # type: ignore[arg-type]
    assert recorder.resources == []
