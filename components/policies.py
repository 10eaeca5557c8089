"""IAM policy documents of the relay host: pure functions, least privilege."""

from __future__ import annotations

from typing import Any, Final

from cmc_relay.userdata.settings import secret_region

PolicyDocument = dict[str, Any]

EC2_ASSUME_ROLE_POLICY: PolicyDocument = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


# What the SSM Agent calls to be a managed instance that takes Run Command (the verifier, the
# drain, an operator's commands) and Session Manager: AmazonSSMManagedInstanceCore's statements
# without Parameter Store (ssm:GetParameter(s) on every parameter), documents, inventory,
# compliance and patching. None of these actions takes a resource narrower than "*" that the
# agent could name before it has registered (ec2messages and ssmmessages take none at all).
SSM_AGENT_ACTIONS: Final = {
    # Registration and heartbeat (the ping status the verifier waits for); the agent's
    # association poller lists the instance's own associations (there are none).
    "RegisterWithSystemsManager": ("ssm:UpdateInstanceInformation", "ssm:ListInstanceAssociations"),
    # Run Command's message delivery: the agent polls for commands and replies with results.
    "ReceiveRunCommand": (
        "ec2messages:AcknowledgeMessage",
        "ec2messages:DeleteMessage",
        "ec2messages:FailMessage",
        "ec2messages:GetEndpoint",
        "ec2messages:GetMessages",
        "ec2messages:SendReply",
    ),
    # The message gateway's channels: newer agents take Run Command over them too.
    "OpenAgentChannels": (
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
    ),
}


def ssm_agent_policy() -> PolicyDocument:
    """Run Command and Session Manager through the SSM Agent, and no read of Parameter Store.

    The CloudWatch agent needs nothing beyond ``monitoring_policy``: it reads its configuration
    from a file in the payload (not from Parameter Store) and ships to a log group the
    component creates, without EC2 tags or metrics of its own."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": "*"}
            for sid, actions in SSM_AGENT_ACTIONS.items()
        ],
    }


def secret_read_policy(
    secret_arn: str | None, kms_key_arn: str | None = None, certificate_arn: str | None = None
) -> PolicyDocument:
    """Read exactly the relay's secrets: the credentials (none with IP authentication) and the
    inbound TLS certificate (inbound_tls_secret_arn); decrypt with a customer key only through
    Secrets Manager."""
    readable = {"ReadRelayCredentials": secret_arn, "ReadInboundTlsCertificate": certificate_arn}
    statements: list[dict[str, Any]] = [
        {"Sid": sid, "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": arn}
        for sid, arn in readable.items()
        if arn is not None
    ]
    if kms_key_arn is not None and secret_arn is not None:
        via_secrets_manager = f"secretsmanager.{secret_region(secret_arn)}.amazonaws.com"
        statements.append(
            {
                "Sid": "DecryptRelayCredentials",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": kms_key_arn,
                "Condition": {"StringEquals": {"kms:ViaService": via_secrets_manager}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def monitoring_policy(namespace: str, log_group_arn: str) -> PolicyDocument:
    """Publish metrics to the relay's namespace only, and ship the mail log to its group only
    (the CloudWatch agent creates a stream per host, then appends to it)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublishRelayMetrics",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",  # PutMetricData has no resource; the condition scopes it
                "Condition": {"StringEquals": {"cloudwatch:namespace": namespace}},
            },
            {
                "Sid": "ShipMailLog",
                "Effect": "Allow",
                "Action": [
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                "Resource": [log_group_arn, f"{log_group_arn}:log-stream:*"],
            },
        ],
    }


def bundle_read_policy(bucket_arn: str) -> PolicyDocument:
    """Read the bundles and their pointer (``payload/``), nothing else in the bucket: a host
    boots with the bundle the pointer names and applies later ones by their hash."""
    statement = {"Sid": "ReadPayloadBundle", "Effect": "Allow", "Action": "s3:GetObject"}
    resource = f"{bucket_arn}/payload/*"
    return {"Version": "2012-10-17", "Statement": [{**statement, "Resource": resource}]}


def tls_only_bucket_policy(bucket_arn: str) -> PolicyDocument:
    """The payload bucket refuses every request that does not come over TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def alarm_topic_key_policy(
    partition: str, account_id: str, region: str, alarm_name_prefix: str
) -> PolicyDocument:
    """The key of the relay's alarm topic: the account administers it (as a key's default
    policy does); CloudWatch may use it to publish for this relay's alarms only. AWS's managed
    alias/aws/sns lets no service but SNS use it, so alarms could not publish to the topic."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AdministerFromTheAccount",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account_id}:root"},
                "Action": "kms:*",
                "Resource": "*",  # in a key policy, "*" is this key
            },
            {
                "Sid": "CloudWatchAlarmsPublish",
                "Effect": "Allow",
                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": account_id},
                    "ArnLike": {
                        "aws:SourceArn": (
                            f"arn:{partition}:cloudwatch:{region}:{account_id}:alarm:"
                            f"{alarm_name_prefix}*"
                        )
                    },
                },
            },
        ],
    }
