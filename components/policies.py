"""IAM policy documents of the relay host: pure functions, least privilege."""

from __future__ import annotations

from typing import Any

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


def ssm_managed_instance_policy_arn(partition: str) -> str:
    """AWS's managed policy that lets Systems Manager manage the instance (no SSH needed)."""
    return f"arn:{partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"


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
