"""A consumer stack: its own network, secret, topic and app servers, and the relay host.

It has its own ``components`` and ``userdata`` packages, as many Pulumi projects do, and imports
the relay from the installed distribution (``pip install cmc-relay-host``). ``run_under_mocks.py``
runs it under Pulumi's mocks (``tests/test_consumer.py`` does so in a fresh virtualenv with the
built wheel); with the Pulumi CLI and AWS credentials it is a real program too.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from cmc_relay import RelayHost, RelayHostArgs
from components import AppNetwork
from userdata.metrics import AGENT_SCRIPT

VPC_CIDR = "10.50.0.0/16"

network = AppNetwork("app", VPC_CIDR)
credentials = aws.secretsmanager.Secret("app-cmc-credentials", description="CMC API user and key")
alerts = aws.sns.Topic("app-alerts")
aws.ec2.Instance(
    "app-server",
    ami="ami-0123456789abcdef0",
    instance_type="t3.micro",
    subnet_id=network.public_subnet.id,
    vpc_security_group_ids=[network.app_servers.id],
    user_data=AGENT_SCRIPT,
)

# Inputs from other resources are Outputs, known only at deployment; the runner checks that each
# reaches the relay's resources. Wiring another is one line here.
ARGS: RelayHostArgs = {
    "vpc_id": network.vpc.id,
    "subnet_id": network.public_subnet.id,
    "allowed_security_group_ids": [network.app_servers.id],
    "credentials_secret_arn": credentials.arn,
    "alarm_topic_arn": alerts.arn,
    "allowed_cidrs": [VPC_CIDR],
    "plan": "standard",
    "os": "debian-12",
}

relay = RelayHost("mail-relay", ARGS)
pulumi.export("smtpEndpoint", relay.smtp_endpoint)
pulumi.export("sendingIps", relay.sending_ips)
