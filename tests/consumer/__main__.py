"""A consumer stack: its own VPC, public subnet and app servers, with the relay host composed in.

Run under mocks by tests/test_stack.py; with the package installed (`pip install cmc-relay-host`)
it is a real program too.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from cmc_relay import RelayHost

VPC_CIDR = "10.50.0.0/16"

vpc = aws.ec2.Vpc("app-vpc", cidr_block=VPC_CIDR, enable_dns_hostnames=True)
gateway = aws.ec2.InternetGateway("app-igw", vpc_id=vpc.id)
routes = aws.ec2.RouteTable(
    "app-public",
    vpc_id=vpc.id,
    routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
)
subnet = aws.ec2.Subnet("app-public-a", vpc_id=vpc.id, cidr_block="10.50.1.0/24")
aws.ec2.RouteTableAssociation("app-public-a-routes", subnet_id=subnet.id, route_table_id=routes.id)
app_servers = aws.ec2.SecurityGroup("app-servers", vpc_id=vpc.id, description="application servers")

relay = RelayHost(
    "mail-relay",
    {
        "vpc_id": vpc.id,
        "subnet_id": subnet.id,
        "allowed_cidrs": [VPC_CIDR],
        "allowed_security_group_ids": [app_servers.id],
        "plan": "standard",
        "api_user": "app-api-user",
        "api_key": pulumi.Config().require_secret("apiKey"),
        "os": "debian-12",
    },
)
pulumi.export("smtpEndpoint", relay.smtp_endpoint)
