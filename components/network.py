"""The component's network: the hosts' security group and its rules, their subnets, the Network
Load Balancer in front of several hosts, and the Route 53 name applications send to."""

import functools
from collections.abc import Mapping, Sequence
from typing import Final

import pulumi
import pulumi_aws as aws

from cmc_relay.components.args import (
    DNS_ZONE_NONE,
    DNS_ZONE_PRIVATE,
    HostOptions,
    RelayHostArgs,
    checked_dns_zone,
    checked_record_name,
    checked_subnet_ids,
)
from cmc_relay.components.fleet import Checked, Fleet, Host, plain_list
from cmc_relay.userdata.settings import DEFAULT_HOST_NAME, ConfigError

SMTP_PORT: Final = 25
SSH_PORT: Final = 22
_WORLD_IPV4: Final = "0.0.0.0/0"
# Seconds resolvers may keep hostName's address: after a single host's replacement, clients
# follow within a minute, and a busy application still asks only once a minute.
DNS_TTL: Final = 60


def counted_networks(
    checked: pulumi.Output[Checked], name: str, count: int
) -> list[pulumi.Output[str]]:
    """The ``count`` networks of ``allowed_cidrs`` or ``ssh_allowed_cidrs``, one rule each: as
    many as were given, so they must stay as many, each different, once known."""

    def network(index: int, values: Checked) -> str:
        networks = plain_list(
            values.settings.allowed_cidrs
            if name == "allowed_cidrs"
            else values.options.ssh_allowed_cidrs
        )
        if len(networks) != count:
            raise ConfigError(
                name,
                f"lists the same network more than once ({count} given, {len(networks)} "
                "different): each gets a security group rule of its own; list each once",
            )
        return str(networks[index])

    return [checked.apply(functools.partial(network, index)) for index in range(count)]


def security_group(
    parent: pulumi.Resource,
    name: str,
    args: RelayHostArgs,
    options: HostOptions,
    checked: pulumi.Output[Checked],
    package_ports: Sequence[int],
    tags: pulumi.Input[Mapping[str, str]],
) -> tuple[aws.ec2.SecurityGroup, list[pulumi.Resource]]:
    """SMTP in from the allowed clients only (SSH too, for ssh verification only); out only
    to the service and HTTPS APIs (and the OS's package mirrors, ``package_ports``). The
    group, and its outbound rules.

    DNS needs no rule: security groups do not filter traffic to the VPC resolver.
    """
    child = pulumi.ResourceOptions(parent=parent)
    group = aws.ec2.SecurityGroup(
        f"{name}-sg",
        vpc_id=args["vpc_id"],
        description=f"CMC relay host {name}: SMTP from allowed clients only",
        tags=tags,
        opts=child,
    )
    _smtp_ingress(f"{name}-smtp-in", group, args, options, checked, child)
    _cidr_ingress(
        f"{name}-ssh-in",
        group,
        counted_networks(checked, "ssh_allowed_cidrs", len(options.ssh_allowed_cidrs)),
        SSH_PORT,
        "SSH for post-boot verification from",
        child,
    )
    service_port = checked.apply(lambda c: c.options.smtp_port)
    # Named after its port up to 0.2.0, when the port had to be known when the program ran.
    named_before = service_port.apply(lambda port: pulumi.Alias(name=f"{name}-out-{port}"))
    rules = [
        _egress(
            f"{name}-out-service",
            group,
            service_port,
            "the service's SMTP relay port",
            child.merge(pulumi.ResourceOptions(aliases=[named_before])),
        ),
        *(
            _egress(f"{name}-out-{port}", group, port, "HTTPS APIs and package mirrors", child)
            for port in package_ports
        ),
    ]
    return group, rules


def _egress(
    rule_name: str,
    group: aws.ec2.SecurityGroup,
    port: pulumi.Input[int],
    purpose: str,
    opts: pulumi.ResourceOptions,
) -> pulumi.Resource:
    """Out to ``port`` anywhere (the service and AWS's APIs have no fixed addresses)."""
    return aws.vpc.SecurityGroupEgressRule(
        rule_name,
        security_group_id=group.id,
        ip_protocol="tcp",
        from_port=port,
        to_port=port,
        cidr_ipv4=_WORLD_IPV4,
        description=purpose,
        opts=opts,
    )


def _cidr_ingress(
    prefix: str,
    group: aws.ec2.SecurityGroup,
    cidrs: Sequence[pulumi.Output[str]],
    port: int,
    description: str,
    child: pulumi.ResourceOptions,
) -> None:
    """One rule per network (IPv4 or IPv6), named ``<prefix>-<index>``."""
    for index, cidr in enumerate(cidrs):
        aws.vpc.SecurityGroupIngressRule(
            f"{prefix}-{index}",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            description=pulumi.Output.concat(description, " ", cidr),
            cidr_ipv4=cidr.apply(lambda network: None if ":" in network else network),
            cidr_ipv6=cidr.apply(lambda network: network if ":" in network else None),
            opts=child,
        )


def _smtp_ingress(
    prefix: str,
    group: aws.ec2.SecurityGroup,
    args: RelayHostArgs,
    options: HostOptions,
    checked: pulumi.Output[Checked],
    child: pulumi.ResourceOptions,
) -> None:
    """Port 25 into ``group`` from the allowed client networks and security groups."""
    cidrs = counted_networks(checked, "allowed_cidrs", len(options.allowed_cidrs))
    _cidr_ingress(prefix, group, cidrs, SMTP_PORT, "SMTP from allowed network", child)
    for index, source_group in enumerate(args.get("allowed_security_group_ids", ())):
        aws.vpc.SecurityGroupIngressRule(
            f"{prefix}-sg-{index}",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=SMTP_PORT,
            to_port=SMTP_PORT,
            referenced_security_group_id=source_group,
            description="SMTP from an allowed security group",
            opts=child,
        )


def subnets(
    args: RelayHostArgs, replicas: int
) -> tuple[list[pulumi.Input[str]], pulumi.Input[Sequence[pulumi.Input[str]]]]:
    """Each host's subnet, and every subnet given (the balancer spans them)."""
    if not args.get("subnet_ids"):
        return [args["subnet_id"]], [args["subnet_id"]]
    # Checked again once known: ids from other resources cannot be compared before.
    subnet_ids = pulumi.Output.all(args["subnet_id"], *args["subnet_ids"]).apply(
        lambda ids: checked_subnet_ids(ids[0], ids[1:], replicas)
    )
    return [subnet_ids[index] for index in range(replicas)], subnet_ids


def balancer(
    parent: pulumi.Resource,
    name: str,
    fleet: Fleet,
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]],
    hosts: list[Host],
    tags: pulumi.Input[Mapping[str, str]],
) -> tuple[aws.lb.LoadBalancer, aws.lb.TargetGroup]:
    """An internal Network Load Balancer passing port 25 through to the hosts, and its
    target group.

    Its security group admits the allowed clients; the hosts admit the balancer's group,
    which with client IP preservation is how AWS lets the traffic through (the hosts' rule
    for the clients would not), and Postfix still sees the client's own address for
    mynetworks. Health checks are subject to the balancer group's outbound rules, not its
    inbound ones, and reach the hosts through the same rule.
    """
    child = pulumi.ResourceOptions(parent=parent)
    group = aws.ec2.SecurityGroup(
        f"{name}-nlb-sg",
        vpc_id=fleet.args["vpc_id"],
        description=f"CMC relay {name}: balancer, SMTP from allowed clients only",
        tags=tags,
        opts=child,
    )
    _smtp_ingress(f"{name}-nlb-in", group, fleet.args, fleet.options, fleet.checked, child)
    aws.vpc.SecurityGroupEgressRule(
        f"{name}-nlb-out",
        security_group_id=group.id,
        ip_protocol="tcp",
        from_port=SMTP_PORT,
        to_port=SMTP_PORT,
        referenced_security_group_id=fleet.security_group.id,
        description="SMTP and health checks to the relay hosts",
        opts=child,
    )
    aws.vpc.SecurityGroupIngressRule(
        f"{name}-smtp-in-nlb",
        security_group_id=fleet.security_group.id,
        ip_protocol="tcp",
        from_port=SMTP_PORT,
        to_port=SMTP_PORT,
        referenced_security_group_id=group.id,
        description="SMTP and health checks through the balancer",
        opts=child,
    )
    load_balancer = aws.lb.LoadBalancer(
        f"{name}-nlb",
        internal=True,
        load_balancer_type="network",
        subnets=subnet_ids,
        # Only at creation can a balancer get security groups.
        security_groups=[group.id],
        # A zone whose host is down or draining still forwards to the others at once.
        enable_cross_zone_load_balancing=True,
        tags=tags,
        opts=child,
    )
    targets = aws.lb.TargetGroup(
        f"{name}-nlb-targets",
        port=SMTP_PORT,
        protocol="TCP",
        target_type="instance",
        vpc_id=fleet.args["vpc_id"],
        preserve_client_ip="true",
        health_check=aws.lb.TargetGroupHealthCheckArgs(
            protocol="TCP",
            port="traffic-port",
            interval=10,
            healthy_threshold=3,
            unhealthy_threshold=3,
        ),
        tags=tags,
        opts=child,
    )
    aws.lb.Listener(
        f"{name}-nlb-smtp",
        load_balancer_arn=load_balancer.arn,
        port=SMTP_PORT,
        protocol="TCP",
        default_actions=[
            aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=targets.arn)
        ],
        tags=tags,
        opts=child,
    )
    for host in hosts:
        aws.lb.TargetGroupAttachment(
            f"{host.name}-target",
            target_group_arn=targets.arn,
            # The attachment's instance, as for the Elastic IP: out of service before
            # the old host stops, in service once the new one has the queue and works.
            target_id=host.queue.instance_id,
            port=SMTP_PORT,
            # In service once the host works; out of it before the host drains.
            opts=pulumi.ResourceOptions(
                parent=parent, depends_on=[host.ready, *([host.drain] if host.drain else [])]
            ),
        )
    return load_balancer, targets


def record_name(
    parent: pulumi.Resource, zone: pulumi.Input[str], host: pulumi.Input[str]
) -> pulumi.Input[str]:
    """host_name, checked to be inside the user's zone (dns_zone an id) once it is looked
    up: at once for a zone id and a host name given as text, at deployment for either from
    a resource."""
    if zone in (DNS_ZONE_PRIVATE, DNS_ZONE_NONE):
        return host
    invoke = pulumi.InvokeOptions(parent=parent)
    if isinstance(zone, str) and isinstance(host, str):
        return checked_record_name(host, aws.route53.get_zone(zone_id=zone, opts=invoke).name)
    zone_id = pulumi.Output.from_input(zone).apply(checked_dns_zone)
    found = aws.route53.get_zone_output(zone_id=zone_id, opts=invoke)
    return pulumi.Output.all(host, found.name).apply(
        lambda values: checked_record_name(values[0], values[1])
    )


def endpoint_record(
    parent: pulumi.Resource,
    name: str,
    fleet: Fleet,
    name_in_zone: pulumi.Input[str],
    hosts: list[Host],
    load_balancer: aws.lb.LoadBalancer | None,
    tags: pulumi.Output[Mapping[str, str]],
) -> aws.route53.Record | None:
    """host_name in DNS (``name_in_zone``, see :func:`record_name`): an A record to the single
    host's private address, or an alias to the balancer; in a private hosted zone for
    host_name (associated with the VPC), in the user's zone, or nowhere (dns_zone none)."""
    zone = fleet.options.dns_zone
    if zone == DNS_ZONE_NONE:
        return None
    child = pulumi.ResourceOptions(parent=parent)
    zone_id: pulumi.Input[str] = zone
    if zone == DNS_ZONE_PRIVATE:
        zone_id = aws.route53.Zone(
            f"{name}-dns-zone",
            name=fleet.args.get("host_name", DEFAULT_HOST_NAME),
            comment=f"CMC relay {name}: the name applications send to",
            vpcs=[aws.route53.ZoneVpcArgs(vpc_id=fleet.args["vpc_id"])],
            tags=tags,
            opts=child,
        ).zone_id
    if load_balancer is not None:
        # The balancer's name never changes; an alias takes its TTL (60 s for ELB).
        alias = aws.route53.RecordAliasArgs(
            name=load_balancer.dns_name,
            zone_id=load_balancer.zone_id,
            evaluate_target_health=False,  # one target: nothing to fail over to
        )
        return aws.route53.Record(
            f"{name}-dns",
            zone_id=zone_id,
            name=name_in_zone,
            type="A",
            aliases=[alias],
            opts=child,
        )
    return aws.route53.Record(
        f"{name}-dns",
        zone_id=zone_id,
        name=name_in_zone,
        type="A",
        ttl=DNS_TTL,
        records=[hosts[0].instance.private_ip],
        # A replacement host gets the name once it works, not while it boots.
        opts=child.merge(pulumi.ResourceOptions(depends_on=[hosts[0].ready])),
    )
