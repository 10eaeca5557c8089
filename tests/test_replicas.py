"""Several relay hosts behind an internal Network Load Balancer, under Pulumi mocks; the
session budget they share (G9) and the drain before a host is deleted.

What AWS and the engine do with these inputs (the balancer's health checks, the order of a
delete-before-replace) is not exercised here: these tests check what the component asks for.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from cmc_relay.components import TYPE_TOKEN, RelayHost
from cmc_relay.components.args import check_subnet_placement, validate_args
from cmc_relay.components.verification import DRAIN, DRAIN_MARGIN_SECONDS
from cmc_relay.userdata.render import SCRIPT_DIR
from cmc_relay.userdata.settings import (
    ConfigError,
    RelaySettings,
    check_session_budget,
    hosts_per_sending_ip,
)
from tests.pulumi_harness import (
    ELB_ARN,
    REGION,
    VERIFIER_REPORT,
    Recorder,
    bundle_of,
    driver_argv,
    host_commands,
    payload_of,
    run_program,
    run_stack,
    stored_bundle,
)

ROOT = Path(__file__).parent.parent
SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
SUBNETS = ["subnet-1a", "subnet-1c", "subnet-1d"]
NAT_A, NAT_B = "198.51.100.7", "198.51.100.8"

INSTANCE = "aws:ec2/instance:Instance"
EIP = "aws:ec2/eip:Eip"
ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
BALANCER = "aws:lb/loadBalancer:LoadBalancer"
TARGETS = "aws:lb/targetGroup:TargetGroup"
LISTENER = "aws:lb/listener:Listener"
ATTACHMENT = "aws:lb/targetGroupAttachment:TargetGroupAttachment"
LOCAL = "command:local:Command"
BALANCER_TYPES = (BALANCER, TARGETS, LISTENER, ATTACHMENT)


def fleet_args(replicas: int, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "vpc_id": "vpc-team",
        "subnet_id": SUBNETS[0],
        "allowed_cidrs": ["10.20.0.0/16"],
        "allowed_security_group_ids": ["sg-app"],
        "credentials_secret_arn": SECRET_ARN,
        "replicas": replicas,
        **({"subnet_ids": SUBNETS[:replicas]} if replicas > 1 else {}),
        **changes,
    }
    return {k: v for k, v in args.items() if v is not None}


def fleet(replicas: int, **changes: Any) -> Recorder:
    args = fleet_args(replicas, **changes)
    return run_program(lambda: RelayHost("relay", args))  # type: ignore[arg-type]


def outputs(recorder: Recorder) -> dict[str, Any]:
    return recorder.outputs[recorder.one(TYPE_TOKEN).urn]


def host_names(replicas: int) -> list[str]:
    return ["relay", *(f"relay-{index}" for index in range(1, replicas))]


# --------------------------------------------------------------------------- hosts


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_one_host_per_subnet_the_first_keeping_the_single_host_names(replicas: int) -> None:
    recorder = fleet(replicas)
    instances = recorder.of_type(INSTANCE)
    assert sorted(i.name for i in instances) == sorted(
        f"{h}-instance" for h in host_names(replicas)
    )
    for host, subnet in zip(host_names(replicas), SUBNETS, strict=False):
        instance = recorder.by_name(f"{host}-instance")
        assert instance.inputs["subnetId"] == subnet
        assert instance.inputs["tags"]["Name"] == host
        assert instance.parent == recorder.one(TYPE_TOKEN).urn
    assert len({i.inputs["subnetId"] for i in instances}) == replicas
    # One security group, role and profile for all hosts.
    # Sorted: resources register in the order their inputs resolve.
    assert sorted(g.name for g in recorder.of_type(GROUP)) == (
        ["relay-nlb-sg", "relay-sg"] if replicas > 1 else ["relay-sg"]
    )
    assert len(recorder.of_type("aws:iam/instanceProfile:InstanceProfile")) == 1
    assert len(recorder.invoked("aws:ec2/getAmi:getAmi")) == 1


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_every_payload_caps_the_hosts_sessions(replicas: int) -> None:
    recorder = fleet(replicas, plan="standard", max_connections=7)
    for instance in recorder.of_type(INSTANCE):
        assert "default_destination_concurrency_limit = 7" in payload_of(recorder, instance)


@pytest.mark.parametrize("replicas", [2, 3])
def test_nat_payloads_carry_the_divided_budget(replicas: int) -> None:
    recorder = fleet(
        replicas, egress="nat", nat_gateway_ips=[NAT_A], max_connections=10 // replicas
    )
    limit = f"default_destination_concurrency_limit = {10 // replicas}"
    assert all(limit in payload_of(recorder, i) for i in recorder.of_type(INSTANCE))


@pytest.mark.parametrize("replicas", [2, 3])
def test_each_host_waits_for_the_one_before_to_be_verified(replicas: int) -> None:
    recorder = fleet(replicas)
    names = host_names(replicas)
    for before, host in itertools.pairwise(names):
        instance = recorder.by_name(f"{host}-instance")
        assert recorder.by_name(f"{before}-verify").urn in instance.dependencies
    assert not any("verify" in d for d in recorder.by_name("relay-instance").dependencies)


def test_without_verification_the_next_host_waits_for_the_instance() -> None:
    recorder = fleet(2, verification="none")
    first = recorder.by_name("relay-instance")
    assert first.urn in recorder.by_name("relay-1-instance").dependencies


def test_verification_reports_of_all_hosts_in_host_order() -> None:
    report = outputs(fleet(3))["verification_report"]
    assert json.loads(report) == [json.loads(VERIFIER_REPORT)] * 3
    assert outputs(fleet(1))["verification_report"] == VERIFIER_REPORT


# --------------------------------------------------------------------------- balancer


def test_a_single_host_has_no_balancer_and_is_its_own_endpoint() -> None:
    recorder = fleet(1, dns_zone="none")  # by default the endpoint is hostName, which points here
    assert not any(recorder.of_type(kind) for kind in BALANCER_TYPES)
    assert outputs(recorder)["smtp_endpoint"] == "10.20.1.10:25"


@pytest.mark.parametrize("replicas", [2, 3])
def test_internal_network_load_balancer_is_the_smtp_endpoint(replicas: int) -> None:
    recorder = fleet(replicas, dns_zone="none")  # by default hostName, an alias to the balancer
    balancer = recorder.one(BALANCER)
    assert balancer.name == "relay-nlb"
    assert balancer.inputs["internal"] is True
    assert balancer.inputs["loadBalancerType"] == "network"
    assert balancer.inputs["subnets"] == SUBNETS[:replicas]
    assert balancer.inputs["securityGroups"] == ["relay-nlb-sg-id"]
    assert balancer.inputs["enableCrossZoneLoadBalancing"] is True
    endpoint = outputs(recorder)["smtp_endpoint"]
    assert endpoint == f"internal-relay-nlb-0123456789.elb.{REGION}.amazonaws.com:25"


@pytest.mark.parametrize("replicas", [2, 3])
def test_tcp_25_to_instance_targets_keeping_the_client_address(replicas: int) -> None:
    recorder = fleet(replicas)
    targets = recorder.one(TARGETS).inputs
    assert (targets["port"], targets["protocol"], targets["targetType"]) == (25, "TCP", "instance")
    assert targets["vpcId"] == "vpc-team"
    assert targets["preserveClientIp"] == "true"  # Postfix's mynetworks sees the client
    assert targets["healthCheck"]["protocol"] == "TCP"
    assert targets["healthCheck"]["port"] == "traffic-port"
    listener = recorder.one(LISTENER).inputs
    assert (listener["port"], listener["protocol"]) == (25, "TCP")
    assert listener["loadBalancerArn"] == f"{ELB_ARN}:loadbalancer/net/relay-nlb"
    assert listener["defaultActions"] == [
        {"type": "forward", "targetGroupArn": f"{ELB_ARN}:targetgroup/relay-nlb-targets"}
    ]


@pytest.mark.parametrize("replicas", [2, 3])
def test_every_host_is_a_target_once_verified_and_leaves_before_it_drains(replicas: int) -> None:
    recorder = fleet(replicas)
    attachments = recorder.of_type(ATTACHMENT)
    assert sorted(a.name for a in attachments) == sorted(
        f"{h}-target" for h in host_names(replicas)
    )
    for host in host_names(replicas):
        attachment = recorder.by_name(f"{host}-target")
        assert attachment.inputs == {
            "targetGroupArn": f"{ELB_ARN}:targetgroup/relay-nlb-targets",
            "targetId": f"{host}-instance-id",
            "port": 25,
        }
        # Deleted (deregistered) before what it depends on: the drain, then the instance.
        assert recorder.by_name(f"{host}-verify").urn in attachment.dependencies
        assert recorder.by_name(f"{host}-drain").urn in attachment.dependencies


def test_balancer_admits_the_allowed_clients_and_the_hosts_admit_the_balancer() -> None:
    recorder = fleet(2)
    balancer_group, host_group = "relay-nlb-sg-id", "relay-sg-id"
    into_balancer = [
        r for r in recorder.of_type(INGRESS) if r.inputs["securityGroupId"] == balancer_group
    ]
    assert {(r.inputs["fromPort"], r.inputs["toPort"]) for r in into_balancer} == {(25, 25)}
    sources = {
        r.inputs.get("cidrIpv4") or r.inputs.get("referencedSecurityGroupId") for r in into_balancer
    }
    assert sources == {"10.20.0.0/16", "sg-app"}
    # Health checks obey the balancer's outbound rules: port 25 to the hosts only.
    (out,) = [r for r in recorder.of_type(EGRESS) if r.inputs["securityGroupId"] == balancer_group]
    assert out.inputs["referencedSecurityGroupId"] == host_group
    assert (out.inputs["fromPort"], out.inputs["toPort"]) == (25, 25)
    # The hosts admit the balancer's group: with client IP preservation, their client rules
    # alone would not let the balanced traffic in.
    from_balancer = recorder.by_name("relay-smtp-in-nlb").inputs
    assert from_balancer["securityGroupId"] == host_group
    assert from_balancer["referencedSecurityGroupId"] == balancer_group
    assert (from_balancer["fromPort"], from_balancer["toPort"]) == (25, 25)


# --------------------------------------------------------------------------- egress


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_eip_egress_gives_each_host_its_own_sending_ip(replicas: int) -> None:
    recorder = fleet(replicas)
    assert sorted(e.name for e in recorder.of_type(EIP)) == sorted(
        f"{h}-eip" for h in host_names(replicas)
    )
    for host in host_names(replicas):
        association = recorder.by_name(f"{host}-eip-association").inputs
        assert association["instanceId"] == f"{host}-instance-id"
    sending = outputs(recorder)["sending_ips"]
    assert sorted(sending) == [f"203.0.113.{25 + n}" for n in range(replicas)]
    # The first host's address, whichever order the mocks numbered the addresses in.
    first_eip = recorder.answered[f"{host_names(replicas)[0]}-eip"]
    assert outputs(recorder)["public_ip"] == first_eip["publicIp"]


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_nat_egress_has_no_elastic_ip_and_sends_from_the_nat_addresses(replicas: int) -> None:
    ips = [NAT_A, NAT_B, NAT_A][:replicas]
    recorder = fleet(replicas, egress="nat", nat_gateway_ips=ips, max_connections=5)
    assert recorder.of_type(EIP) == recorder.of_type(ASSOCIATION) == []
    assert outputs(recorder).get("public_ip") is None
    assert outputs(recorder)["sending_ips"] == list(dict.fromkeys(ips))


def test_nat_hosts_are_verified_and_drained_without_an_elastic_ip() -> None:
    recorder = fleet(2, egress="nat", nat_gateway_ips=[NAT_A, NAT_B])
    steps = (("verify", ("instance", "ssm-agent")), ("drain", ("instance", "ssm-agent", "out-443")))
    for step, needs in steps:
        command = recorder.by_name(f"relay-1-{step}")
        for needed in needs:
            name = f"relay-1-{needed}" if needed == "instance" else f"relay-{needed}"
            assert recorder.by_name(name).urn in command.dependencies, (step, needed)


def test_ssh_verification_behind_nat_connects_to_the_private_address() -> None:
    recorder = fleet(
        2,
        egress="nat",
        nat_gateway_ips=[NAT_A, NAT_B],
        verification="ssh",
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVlcmlmaWNhdGlvbi10ZXN0LWtleQ ci",
        ssh_private_key="private",
        ssh_allowed_cidrs=["10.0.0.0/8"],
    )
    connection = recorder.by_name("relay-1-verify").inputs["connection"]["value"]
    assert connection["host"] == "10.20.1.11"


# --------------------------------------------------------------------------- drain


def drain_command(recorder: Recorder, host: str) -> list[str]:
    return driver_argv(recorder.by_name(f"{host}-drain").inputs["delete"])


@pytest.mark.parametrize("replicas", [2, 3])
def test_every_host_drains_through_systems_manager_before_it_is_deleted(replicas: int) -> None:
    recorder = fleet(replicas, drain_timeout_seconds=900)
    component = recorder.one(TYPE_TOKEN)
    for host in host_names(replicas):
        drain = recorder.by_name(f"{host}-drain")
        assert drain.type == LOCAL
        assert drain.parent == component.urn
        assert "create" not in drain.inputs  # nothing to do until the host goes
        assert drain_command(recorder, host) == [
            "-m", "cmc_relay.components.ssm_verify",
            "--instance-id", f"{host}-instance-id",
            "--region", REGION,
            "--timeout", str(900 + DRAIN_MARGIN_SECONDS),
            "--run", f"{DRAIN} --timeout 900",
            "--purpose", "drain",
        ]  # fmt: skip
        # Replaced with its instance (so the old host drains), never skipped with it.
        assert drain.inputs["triggers"] == [f"{host}-instance-id"]
        assert drain.deleted_with == ""
        assert drain.inputs["addPreviousOutputInEnv"] is False
        # Deleted before what the drain needs: instance, address, permissions, egress.
        for needed in (f"{host}-instance", f"{host}-eip-association", "relay-ssm-agent",
                       "relay-read-credentials", "relay-out-service", "relay-out-443"):  # fmt: skip
            assert recorder.by_name(needed).urn in drain.dependencies, needed
        # The old host is drained and gone before its replacement takes its address.
        assert recorder.by_name(f"{host}-instance").delete_before_replace is True


def test_draining_hosts_ship_the_drain_script() -> None:
    recorder = fleet(2)
    assert f"{SCRIPT_DIR}/cmc-relay-drain" in bundle_of(recorder)
    # One bundle, which every host applies.
    sha256 = stored_bundle(recorder).inputs["key"].removeprefix("payload/").removesuffix(".tar.gz")
    for host in ("relay", "relay-1"):
        assert recorder.by_name(f"{host}-apply").inputs["triggers"][1] == sha256


def test_a_single_host_does_not_drain_by_default() -> None:
    recorder = fleet(1)
    # The queue guard, as every host has: tests/test_queue_volume.py.
    assert sorted(c.name for c in host_commands(recorder)) == [
        "relay-apply", "relay-queue-guard", "relay-verify"
    ]  # fmt: skip
    assert f"{SCRIPT_DIR}/cmc-relay-drain" not in bundle_of(recorder)
    assert recorder.one(INSTANCE).delete_before_replace is False
    assert len(recorder.invoked("aws:index/getRegion:getRegion")) == 1  # for the verifier


def test_a_single_host_may_drain_and_several_may_not() -> None:
    single = fleet(1, drain_on_delete=True, verification="none")
    assert single.by_name("relay-drain").inputs["triggers"] == ["relay-instance-id"]
    assert f"{SCRIPT_DIR}/cmc-relay-drain" in bundle_of(single)
    assert len(single.invoked("aws:index/getRegion:getRegion")) == 1
    several = fleet(2, drain_on_delete=False)
    assert sorted(c.name for c in host_commands(several)) == [
        "relay-1-apply", "relay-1-queue-guard", "relay-1-verify",
        "relay-apply", "relay-queue-guard", "relay-verify",
    ]  # fmt: skip
    assert f"{SCRIPT_DIR}/cmc-relay-drain" not in bundle_of(several)
    assert all(not i.delete_before_replace for i in several.of_type(INSTANCE))


# --------------------------------------------------------------------------- subnets


def test_subnet_ids_known_only_at_deployment_are_checked_then() -> None:
    def program() -> None:
        late = pulumi.Output.from_input("subnet-1c")
        RelayHost(
            "relay",
            fleet_args(2, subnet_ids=[pulumi.Output.from_input(SUBNETS[0]), late, late]),  # type: ignore[arg-type]
        )

    with pytest.raises(Exception, match="lists subnet-1c more than once"):
        run_program(program)


def test_subnet_ids_from_other_resources_reach_the_hosts_and_the_balancer() -> None:
    def program() -> None:
        ids = [pulumi.Output.from_input(s) for s in SUBNETS]
        RelayHost("relay", fleet_args(3, subnet_id=ids[0], subnet_ids=ids))  # type: ignore[arg-type]

    recorder = run_program(program)
    assert recorder.by_name("relay-2-instance").inputs["subnetId"] == SUBNETS[2]
    assert recorder.one(BALANCER).inputs["subnets"] == SUBNETS


def test_subnets_beyond_the_hosts_are_the_balancers_too() -> None:
    recorder = fleet(2, subnet_ids=SUBNETS)
    assert len(recorder.of_type(INSTANCE)) == 2
    assert recorder.one(BALANCER).inputs["subnets"] == SUBNETS


def test_placement_one_vpc_one_subnet_per_zone() -> None:
    check_subnet_placement([("subnet-a", "vpc-1", "az-a"), ("subnet-c", "vpc-1", "az-c")])
    with pytest.raises(ConfigError, match="subnet-a and subnet-a2 are both in az-a: one subnet"):
        check_subnet_placement([("subnet-a", "vpc-1", "az-a"), ("subnet-a2", "vpc-1", "az-a")])
    with pytest.raises(ConfigError, match="subnet-x is in vpc-2, not in vpc-1 with subnet-a"):
        check_subnet_placement([("subnet-a", "vpc-1", "az-a"), ("subnet-x", "vpc-2", "az-c")])


# --------------------------------------------------------------------------- budget (pure)


def settings(**changes: Any) -> RelaySettings:
    return RelaySettings(allowed_cidrs=("10.0.0.0/16",), **changes)


def test_hosts_behind_one_nat_address_or_one_each() -> None:
    assert hosts_per_sending_ip(3, [NAT_A]) == {NAT_A: 3}
    assert hosts_per_sending_ip(3, [NAT_A, NAT_B, NAT_A]) == {NAT_A: 2, NAT_B: 1}


@pytest.mark.parametrize(
    ("replicas", "changes", "nat", "pro_max"),
    [
        (3, {}, [], 100),  # an Elastic IP each: 10 per host
        (2, {"max_connections": 5}, [NAT_A], 100),  # 2 x 5 = 10 behind one address
        (2, {}, [NAT_A, NAT_B], 100),  # one address each
        (3, {"max_connections": 5}, [NAT_A, NAT_A, NAT_B], 100),
        (3, {"plan": "pro", "subdomain": "acme", "max_connections": 33}, [], 100),  # 99
        (2, {"plan": "pro", "subdomain": "acme", "max_connections": 10}, [NAT_A], 20),
    ],
)
def test_budgets_that_fit(
    replicas: int, changes: dict[str, Any], nat: list[str], pro_max: int
) -> None:
    check_session_budget(settings(**changes), replicas, nat, pro_max)


BASE = {
    "vpc_id": "vpc-1",
    "subnet_id": "subnet-a",
    "allowed_cidrs": ["10.0.0.0/16"],
    "credentials_secret_arn": SECRET_ARN,
}
PRO = {"plan": "pro", "subdomain": "acme"}
TWO = {"replicas": 2, "subnet_ids": ["subnet-a", "subnet-c"]}
THREE = {"replicas": 3, "subnet_ids": ["subnet-a", "subnet-c", "subnet-d"]}
NAT = {"egress": "nat", "nat_gateway_ips": [NAT_A]}
MC = "max_connections (config maxConnections): "
X = "\N{MULTIPLICATION SIGN}"  # the budget messages show their arithmetic


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {**THREE, **NAT},
            MC + f"3 hosts {X} maxConnections 10 behind NAT IP {NAT_A} = 30 sessions > 10 allowed "
            "per sending IP on plan trial (G9); set maxConnections to at most 3",
            id="three-behind-one-nat",
        ),
        pytest.param(
            {
                **THREE,
                "egress": "nat",
                "nat_gateway_ips": [NAT_A, NAT_B, NAT_A],
                "max_connections": 6,
            },
            MC + f"2 hosts {X} maxConnections 6 behind NAT IP {NAT_A} = 12 sessions > 10 allowed "
            "per sending IP on plan trial (G9); set maxConnections to at most 5",
            id="two-of-three-share-a-nat",
        ),
        pytest.param(
            {**TWO, **NAT, "plan": "standard", "max_connections": 6},
            MC + f"2 hosts {X} maxConnections 6 behind NAT IP {NAT_A} = 12 sessions > 10 allowed "
            "per sending IP on plan standard (G9); set maxConnections to at most 5",
            id="standard-behind-nat",
        ),
        pytest.param(
            {**THREE, **PRO, "max_connections": 40},
            MC
            + f"3 hosts {X} maxConnections 40 = 120 sessions > proMaxSessions 100 (the console's "
            "max sessions); set maxConnections to at most 33",
            id="pro-total",
        ),
        pytest.param(
            {**PRO, "max_connections": 40, "pro_max_sessions": 20},
            MC + f"1 host {X} maxConnections 40 = 40 sessions > proMaxSessions 20 (the console's "
            "max sessions); set maxConnections to at most 20",
            id="pro-single-host",
        ),
        pytest.param(
            {**THREE, **PRO, "max_connections": 1, "pro_max_sessions": 2},
            MC + f"3 hosts {X} maxConnections 1 = 3 sessions > proMaxSessions 2 (the console's max "
            "sessions); at most 2 hosts fit, each with maxConnections 1",
            id="pro-more-hosts-than-sessions",
        ),
        pytest.param(
            {**TWO, "max_connections": 11},
            "max_connections (config maxConnections): must be between 1 and 10 on plan trial",
            id="elastic-ip-per-host-cap",
        ),
    ],
)
def test_budgets_that_do_not_fit_are_refused_showing_the_arithmetic(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        validate_args({**BASE, **changes})
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replicas": 0}, "replicas: must be between 1 and 10; got 0"),
        ({"replicas": 11}, "replicas: must be between 1 and 10; got 11"),
        ({"replicas": 2}, "subnet_ids (config subnetIds): is required with replicas 2"),
        (
            {**THREE, "subnet_ids": ["subnet-a", "subnet-c"]},
            "subnet_ids (config subnetIds): has 2 subnets for replicas 3",
        ),
        (
            {**TWO, "subnet_ids": ["subnet-a", "subnet-a"]},
            "subnet_ids (config subnetIds): lists subnet-a more than once",
        ),
        (
            {**TWO, "subnet_ids": ["subnet-c", "subnet-d"]},
            "subnet_ids (config subnetIds): must start with subnet_id subnet-a",
        ),
        ({"egress": "public"}, "egress: got 'public'; allowed: eip, nat"),
        ({"egress": "nat"}, "nat_gateway_ips (config natGatewayIps): is required with egress nat"),
        (
            {"egress": "nat", "nat_gateway_ips": []},
            "nat_gateway_ips (config natGatewayIps): is required with egress nat",
        ),
        (
            {"nat_gateway_ips": [NAT_A]},
            "nat_gateway_ips (config natGatewayIps): only applies to egress nat; it is eip",
        ),
        (
            {"egress": "nat", "nat_gateway_ips": ["198.51.100.0/24"]},
            "nat_gateway_ips (config natGatewayIps): '198.51.100.0/24' is not an IPv4 address",
        ),
        (
            {**THREE, "egress": "nat", "nat_gateway_ips": [NAT_A, NAT_B], "max_connections": 3},
            "nat_gateway_ips (config natGatewayIps): give one address (every host sends through "
            "it) or 3, one per host",
        ),
        (
            {"pro_max_sessions": 50},
            "pro_max_sessions (config proMaxSessions): only applies to plan pro; it is trial",
        ),
        (
            {**PRO, "pro_max_sessions": 101},
            "pro_max_sessions (config proMaxSessions): must be between 1 and 100",
        ),
        ({"drain_on_delete": "yes"}, "drain_on_delete (config drainOnDelete): must be true or"),
        (
            {"drain_timeout_seconds": 60},
            "drain_timeout_seconds (config drainTimeoutSeconds): only applies with drain_on_delete",
        ),
        (
            {**TWO, "drain_timeout_seconds": 5},
            "drain_timeout_seconds (config drainTimeoutSeconds): must be between 30 and 7200",
        ),
    ],
)
def test_bad_fleet_arguments_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_args({**BASE, **changes})
    assert message in str(error.value)


def test_defaults_one_host_with_an_elastic_ip_and_no_drain() -> None:
    _, options = validate_args(BASE)
    assert (options.replicas, options.egress, options.nat_gateway_ips) == (1, "eip", ())
    assert (options.drain_on_delete, options.drain_timeout_seconds) == (False, 600)
    _, several = validate_args({**BASE, **TWO})
    assert several.drain_on_delete is True


def test_refused_budget_creates_nothing() -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError, match="30 sessions > 10 allowed per sending IP"):
        run_program(lambda: RelayHost("relay", fleet_args(3, **NAT)), recorder=recorder)  # type: ignore[arg-type]
    assert recorder.resources == []


# --------------------------------------------------------------------------- stack


def test_stack_config_spreads_hosts_over_the_given_subnets() -> None:
    recorder = run_stack(
        {
            "credentialsSecretArn": SECRET_ARN,
            "replicas": 3,
            "subnetIds": ["subnet-a", "subnet-b", "subnet-c"],
            "drainTimeoutSeconds": 1200,
        }
    )
    subnets = {i.name: i.inputs["subnetId"] for i in recorder.of_type(INSTANCE)}
    assert subnets == {
        "relay-instance": "subnet-a",
        "relay-1-instance": "subnet-b",
        "relay-2-instance": "subnet-c",
    }
    assert recorder.one(BALANCER).inputs["subnets"] == ["subnet-a", "subnet-b", "subnet-c"]
    assert recorder.by_name("relay-sg").inputs["vpcId"] == "vpc-default"
    assert "--run" in drain_command(recorder, "relay-2")
    assert f"{DRAIN} --timeout 1200" in drain_command(recorder, "relay-2")
    exported = recorder.stack_outputs
    assert exported["smtpEndpoint"] == "cmc-relay.internal:25"  # an alias to the balancer
    assert sorted(exported["sendingIps"]) == ["203.0.113.25", "203.0.113.26", "203.0.113.27"]


def test_stack_config_nat_egress_and_pro_budget() -> None:
    recorder = run_stack(
        {
            "credentialsSecretArn": SECRET_ARN,
            "plan": "pro",
            "subdomain": "acme",
            "replicas": 2,
            "subnetIds": ["subnet-a", "subnet-b"],
            "egress": "nat",
            "natGatewayIps": [NAT_A, NAT_B],
            "maxConnections": 25,
            "proMaxSessions": 50,
            "drainOnDelete": False,
        }
    )
    assert recorder.of_type(EIP) == []
    assert [c for c in recorder.of_type(LOCAL) if c.name.endswith("-drain")] == []
    assert recorder.stack_outputs["sendingIps"] == [NAT_A, NAT_B]
    assert all(
        "default_destination_concurrency_limit = 25" in payload_of(recorder, i)
        for i in recorder.of_type(INSTANCE)
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {
                "replicas": 2,
                "subnetIds": ["subnet-a", "subnet-b"],
                "egress": "nat",
                "natGatewayIps": [NAT_A],
            },
            f"(config maxConnections): 2 hosts {X} maxConnections 10 behind NAT IP "
            f"{NAT_A} = 20 sessions > 10 allowed per sending IP",
        ),
        (
            {"replicas": 2, "subnetIds": ["subnet-a", "subnet-a2"]},
            "(config subnetIds): subnet-a and subnet-a2 are both in ap-northeast-1a",
        ),
        (
            {"replicas": 2, "subnetIds": ["subnet-team", "subnet-b"]},
            "(config subnetIds): subnet-b is in vpc-default, not in vpc-team with subnet-team",
        ),
        (
            {"replicas": 2, "subnetIds": ["subnet-a", "subnet-b"], "proMaxSessions": 10},
            "(config proMaxSessions): only applies to plan pro",
        ),
    ],
)
def test_stack_config_refusals_name_the_key(config: dict[str, Any], message: str) -> None:
    recorder = Recorder()
    with pytest.raises(Exception) as error:
        run_stack({"credentialsSecretArn": SECRET_ARN, **config}, recorder=recorder)
    assert message in str(error.value)
    assert recorder.resources == []


def test_pulumi_yaml_declares_the_new_keys() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    kinds = {
        "replicas": "integer",
        "subnetIds": "array",
        "egress": "string",
        "natGatewayIps": "array",
        "proMaxSessions": "integer",
        "drainOnDelete": "boolean",
        "drainTimeoutSeconds": "integer",
    }
    for key, kind in kinds.items():
        assert declared[key]["type"] == kind, key
        assert declared[key]["description"], key
