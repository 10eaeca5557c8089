"""A stable name for the applications: hostName in Route 53, under Pulumi mocks.

What Route 53 answers is not exercised here (no AWS): these tests check the zone, its VPC, the
record and what smtpEndpoint says, and that the name is the one the host's certificate carries.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from cmc_relay.components import TYPE_TOKEN, RelayHost
from cmc_relay.components.args import checked_dns_zone, checked_record_name
from cmc_relay.components.network import DNS_TTL
from cmc_relay.userdata.settings import ConfigError
from tests.pulumi_harness import (
    BALANCER_ZONE_ID,
    PRIVATE_ZONE_ID,
    Recorder,
    payload_of,
    run_program,
    run_stack,
)

SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
TEAM_ZONE = "Z0123456789TEAMZONE"  # team.example, in the harness's HOSTED_ZONES
ZONE = "aws:route53/zone:Zone"
RECORD = "aws:route53/record:Record"
SUBNETS = ["subnet-1a", "subnet-1c", "subnet-1d"]


def relay_args(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "vpc_id": "vpc-team",
        "subnet_id": SUBNETS[0],
        "allowed_cidrs": ["10.20.0.0/16"],
        "credentials_secret_arn": SECRET_ARN,
        **changes,
    }
    return {k: v for k, v in args.items() if v is not None}


def relay(recorder: Recorder | None = None, **changes: Any) -> Recorder:
    args = relay_args(**changes)
    return run_program(lambda: RelayHost("relay", args), recorder=recorder)  # type: ignore[arg-type]


def endpoint(recorder: Recorder) -> Any:
    return recorder.outputs[recorder.one(TYPE_TOKEN).urn]["smtp_endpoint"]


def test_one_host_gets_a_private_zone_for_its_name_and_an_a_record() -> None:
    recorder = relay()
    component = recorder.one(TYPE_TOKEN)
    zone, record = recorder.one(ZONE), recorder.one(RECORD)
    assert zone.name == "relay-dns-zone" and record.name == "relay-dns"
    assert zone.parent == record.parent == component.urn
    assert zone.inputs["name"] == "cmc-relay.internal"
    assert zone.inputs["vpcs"] == [{"vpcId": "vpc-team"}]  # the association
    assert record.inputs == {
        "zoneId": PRIVATE_ZONE_ID,
        "name": "cmc-relay.internal",
        "type": "A",
        "ttl": DNS_TTL,
        "records": ["10.20.1.10"],  # the instance's private address
    }
    # A replacement host takes the name once verified, not while it boots.
    assert recorder.by_name("relay-verify").urn in record.dependencies
    assert endpoint(recorder) == "cmc-relay.internal:25"


def test_several_hosts_get_an_alias_to_the_balancer() -> None:
    recorder = relay(replicas=3, subnet_ids=SUBNETS, host_name="mail-relay.internal")
    record = recorder.one(RECORD)
    assert recorder.one(ZONE).inputs["name"] == "mail-relay.internal"
    assert record.inputs["name"] == "mail-relay.internal"
    assert record.inputs["type"] == "A"
    assert "ttl" not in record.inputs and "records" not in record.inputs
    (alias,) = record.inputs["aliases"]
    balancer = recorder.one("aws:lb/loadBalancer:LoadBalancer")
    assert alias["name"] == f"internal-{balancer.name}-0123456789.elb.ap-northeast-1.amazonaws.com"
    assert alias["zoneId"] == BALANCER_ZONE_ID
    assert endpoint(recorder) == "mail-relay.internal:25"


def test_a_given_zone_gets_the_record_and_no_zone_is_created() -> None:
    recorder = relay(dns_zone=TEAM_ZONE, host_name="relay.team.example")
    assert recorder.of_type(ZONE) == []
    (lookup,) = recorder.invoked("aws:route53/getZone:getZone")
    assert lookup.args["zoneId"] == TEAM_ZONE
    record = recorder.one(RECORD)
    assert record.inputs["zoneId"] == TEAM_ZONE
    assert record.inputs["name"] == "relay.team.example"
    assert endpoint(recorder) == "relay.team.example:25"


def test_a_host_name_outside_the_given_zone_is_refused_before_any_resource() -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError, match=r"dns_zone \(config dnsZone\).*team\.example"):
        relay(recorder, dns_zone=TEAM_ZONE)  # hostName cmc-relay.internal
    assert [r.type for r in recorder.resources] == [TYPE_TOKEN]  # the zone looked up, nothing made


def test_a_zone_id_known_only_at_deployment_is_looked_up_then() -> None:
    def program() -> None:
        zone = pulumi.Output.from_input(TEAM_ZONE)
        RelayHost("relay", relay_args(dns_zone=zone, host_name="relay.team.example"))  # type: ignore[arg-type]

    recorder = run_program(program)
    assert recorder.one(RECORD).inputs["name"] == "relay.team.example"
    assert recorder.one(RECORD).inputs["zoneId"] == TEAM_ZONE


def test_dns_zone_none_keeps_the_address() -> None:
    recorder = relay(dns_zone="none")
    assert recorder.of_type(ZONE) == [] and recorder.of_type(RECORD) == []
    assert recorder.invoked("aws:route53/getZone:getZone") == []
    assert endpoint(recorder) == "10.20.1.10:25"


@pytest.mark.parametrize("zone", ["example.com", "z0123", "", "PRIVATE", "Z012-34"])
def test_a_bad_dns_zone_is_refused_before_any_resource(zone: str) -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError, match=r"dns_zone \(config dnsZone\)"):
        relay(recorder, dns_zone=zone)
    assert recorder.resources == []


def test_record_name_check() -> None:
    assert checked_record_name("relay.team.example", "team.example.") == "relay.team.example"
    assert checked_record_name("team.example", "Team.Example") == "team.example"
    with pytest.raises(ConfigError, match="not in it"):
        checked_record_name("relay.evilteam.example", "team.example")
    assert checked_dns_zone("Z1D633PJN98FT9") == "Z1D633PJN98FT9"


def test_the_name_in_dns_is_the_name_the_certificate_is_made_for() -> None:
    """cmc-relay-inbound-cert makes the certificate for $CMC_HOST_NAME (tests/integration
    test_inbound_tls checks its subjectAltName)."""
    recorder = relay(host_name="relay.team.example", dns_zone=TEAM_ZONE)
    payload = payload_of(recorder, recorder.one("aws:ec2/instance:Instance"))
    assert "CMC_HOST_NAME=relay.team.example\n" in payload
    assert recorder.one(RECORD).inputs["name"] == "relay.team.example"


def test_the_stack_exports_the_name_as_smtp_endpoint() -> None:
    recorder = run_stack({"credentialsSecretArn": SECRET_ARN, "hostName": "relay.team.example"})
    assert recorder.stack_outputs["smtpEndpoint"] == "relay.team.example:25"
    assert recorder.stack_outputs["privateIp"] == "10.20.1.10"
    given = run_stack(
        {"credentialsSecretArn": SECRET_ARN, "hostName": "relay.team.example", "dnsZone": TEAM_ZONE}
    )
    assert given.one(RECORD).inputs["zoneId"] == TEAM_ZONE
