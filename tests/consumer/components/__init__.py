"""The consumer project's own ``components`` package: its network, as many projects lay it out.

The relay's distribution must not shadow this name (it did before 0.2.0, when the wheel
installed a top-level ``components``), nor may the relay's code import this one.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

# The runner checks that the program saw this package, not one from site-packages.
OWNER = "relay-consumer"


class AppNetwork(pulumi.ComponentResource):
    """A VPC with one public subnet (routed to an internet gateway) and the app servers' group."""

    def __init__(self, name: str, cidr: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("relay-consumer:network:AppNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc", cidr_block=cidr, enable_dns_hostnames=True, opts=child
        )
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, opts=child)
        routes = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self.vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            opts=child,
        )
        self.public_subnet = aws.ec2.Subnet(
            f"{name}-public-a",
            vpc_id=self.vpc.id,
            cidr_block=cidr.replace(".0.0/16", ".1.0/24"),
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-public-a-routes",
            subnet_id=self.public_subnet.id,
            route_table_id=routes.id,
            opts=child,
        )
        self.app_servers = aws.ec2.SecurityGroup(
            f"{name}-app-servers", vpc_id=self.vpc.id, description="application servers", opts=child
        )
        self.register_outputs({"vpcId": self.vpc.id, "subnetId": self.public_subnet.id})
