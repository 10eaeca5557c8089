"""Every invalid input is refused before any resource exists, with a message naming the key."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmc_relay.components.args import validate_args
from cmc_relay.userdata.render import postfix_parameters
from cmc_relay.userdata.settings import ConfigError, RelaySettings

SECRET_ARN = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
BASE: dict[str, Any] = {
    "vpc_id": "vpc-1",
    "subnet_id": "subnet-1",
    "allowed_cidrs": ["10.0.0.0/16"],
    "credentials_secret_arn": SECRET_ARN,
}


def with_(**changes: Any) -> dict[str, Any]:
    args = {**BASE, **changes}
    return {k: v for k, v in args.items() if v is not None}


# Not DAYS HH:MM: a full day name, one-digit hour, no such hour, lower case, systemd's own
# syntax, no space, daily among days, empty.
BAD_WINDOWS = ("Sunday 03:00", "Sun 3:00", "Sun 24:00", "sun 03:00", "*-*-* 03:00:00",
               "Sun,03:00", "daily,Sun 03:00", "")  # fmt: skip
BAD_INPUTS = [
    pytest.param(with_(plan="gold"), "plan: got 'gold'; allowed: trial, standard, pro", id="plan"),
    pytest.param(with_(os="centos-7"), "os: got 'centos-7'; allowed: al2023", id="os"),
    pytest.param(
        with_(tls_level="none"), "tls_level (config tlsLevel): got 'none'; allowed: may", id="tls"
    ),
    pytest.param(
        with_(auth_mode="oauth"), "auth_mode (config authMode): got 'oauth'", id="auth-mode"
    ),
    pytest.param(
        with_(tls_level="encrypt"),
        "tls_level (config tlsLevel): 'encrypt' with auth_mode sasl: the relay sends the API "
        "key only over TLS with a verified certificate",
        id="sasl-unverified-tls",
    ),
    pytest.param(
        with_(tls_level="may"), "'encrypt' and 'may' apply to auth_mode ip", id="sasl-may"
    ),
    pytest.param(
        with_(keep_received_headers="no"),
        "keep_received_headers (config keepReceivedHeaders): must be true or false; got 'no'",
        id="keep-received-headers",
    ),
    pytest.param(with_(plan="pro"), "subdomain: is required with plan pro", id="pro-no-subdomain"),
    pytest.param(
        with_(plan="pro", subdomain="Acme_Corp"),
        "subdomain: 'Acme_Corp' is not a DNS label",
        id="subdomain-label",
    ),
    pytest.param(
        with_(plan="pro", subdomain="-acme"),
        "subdomain: '-acme' is not a DNS label",
        id="subdomain-hyphen",
    ),
    pytest.param(
        with_(subdomain="acme"),
        "subdomain: only applies to plan pro; plan is trial",
        id="subdomain-not-pro",
    ),
    pytest.param(
        with_(auth_mode="ip", credentials_secret_arn=None),
        "auth_mode (config authMode): 'ip' (IP address authentication) needs plan pro",
        id="ip-not-pro",
    ),
    pytest.param(
        with_(credentials_secret_arn=None),
        "credentials_secret_arn (config credentialsSecretArn): auth_mode sasl needs credentials",
        id="sasl-no-credentials",
    ),
    pytest.param(
        with_(credentials_secret_arn=None, api_user="user"),
        "auth_mode sasl needs credentials",
        id="api-user-without-key",
    ),
    pytest.param(
        with_(api_user="user", api_key="key"),
        "give either credentials_secret_arn or api_user",
        id="both-credentials",
    ),
    pytest.param(
        with_(credentials_secret_arn=None, api_user="us:er", api_key="k"),
        "api_user (config apiUser): 'us:er' is not a valid API user name",
        id="api-user-colon",
    ),
    pytest.param(
        with_(credentials_secret_arn="arn:aws:s3:::bucket"),
        "credentials_secret_arn (config credentialsSecretArn): 'arn:aws:s3:::bucket' is not a "
        "Secrets Manager secret ARN",
        id="secret-arn",
    ),
    pytest.param(
        with_(max_connections=11),
        "max_connections (config maxConnections): must be between 1 and 10 on plan trial; got 11",
        id="max-connections-trial",
    ),
    pytest.param(
        with_(max_connections=0),
        "must be between 1 and 10 on plan trial; got 0",
        id="max-connections-zero",
    ),
    pytest.param(
        with_(plan="pro", subdomain="acme", max_connections=101),
        "must be between 1 and 100 on plan pro; got 101",
        id="max-connections-pro",
    ),
    pytest.param(
        with_(max_connections=True),
        "max_connections (config maxConnections): must be an integer; got True",
        id="max-connections-bool",
    ),
    pytest.param(
        with_(smtp_port=70000),
        "smtp_port (config smtpPort): must be between 1 and 65535",
        id="smtp-port-high",
    ),
    pytest.param(with_(smtp_port=0), "smtp_port (config smtpPort): must be between", id="port-0"),
    pytest.param(
        with_(allowed_cidrs=["10.0.0.0/33"]),
        "allowed_cidrs (config allowedCidrs): '10.0.0.0/33' is not a valid CIDR block",
        id="cidr-invalid",
    ),
    pytest.param(
        with_(allowed_cidrs=["10.0.0.5/16"]),
        "'10.0.0.5/16' is not a valid CIDR block (10.0.0.5/16 has host bits set)",
        id="cidr-host-bits",
    ),
    pytest.param(
        with_(allowed_cidrs=["10.0.0.0/8", "0.0.0.0/0"]),
        "allowed_cidrs (config allowedCidrs): 0.0.0.0/0 would make the host an open relay",
        id="cidr-world-v4",
    ),
    pytest.param(
        with_(allowed_cidrs=["::/0"]), "::/0 would make the host an open relay", id="cidr-world-v6"
    ),
    pytest.param(
        with_(allowed_cidrs=[]),
        "allowed_cidrs (config allowedCidrs): must be a non-empty list",
        id="cidr-empty",
    ),
    pytest.param(
        with_(allowed_cidrs="10.0.0.0/16"),
        "must be a non-empty list of CIDR blocks",
        id="cidr-string",
    ),
    pytest.param(
        with_(client_message_rate_limit=-1),
        "client_message_rate_limit (config clientMessageRateLimit): must be between 0 and "
        "1000000 per minute",
        id="client-message-rate-negative",
    ),
    pytest.param(
        with_(client_recipient_rate_limit="many"),
        "client_recipient_rate_limit (config clientRecipientRateLimit): must be an integer",
        id="client-recipient-rate-string",
    ),
    pytest.param(
        with_(client_connection_limit=101),
        "client_connection_limit (config clientConnectionLimit): must be between 0 and 100 "
        "(smtpd runs at most 100 processes)",
        id="client-connections-over-smtpd",
    ),
    pytest.param(
        with_(alarm_sent_threshold=0),
        "alarm_sent_threshold (config alarmSentThreshold): must be between 1 and",
        id="sent-threshold-zero",
    ),
    pytest.param(
        with_(message_size_limit=0),
        "message_size_limit (config messageSizeLimit): must be between 1024 and",
        id="size-zero",
    ),
    pytest.param(
        with_(smtp_host="smtp host"),
        "smtp_host (config smtpHost): 'smtp host' is not a valid",
        id="smtp-host",
    ),
    pytest.param(
        with_(host_name="relay"),
        "host_name (config hostName): 'relay' must be a fully qualified",
        id="host-name",
    ),
    pytest.param(
        with_(instance_type="huge"),
        "instance_type (config instanceType): 'huge' is not",
        id="instance-type",
    ),
    pytest.param(with_(ami_id="ami-xyz"), "ami_id (config amiId): 'ami-xyz' is not", id="ami"),
    pytest.param(
        with_(image_refresh="next week"),
        "image_refresh (config imageRefresh): 'next week': give up to 40 letters",
        id="image-refresh",
    ),
    pytest.param(
        with_(dns_zone="corp.example"),
        "dns_zone (config dnsZone): 'corp.example': give private",
        id="dns-zone",
    ),
    pytest.param(
        with_(kms_key_arn="alias/foo"),
        "kms_key_arn (config kmsKeyArn): 'alias/foo' is not",
        id="kms-arn",
    ),
    pytest.param(
        with_(secret_refresh_minutes=0),
        "secret_refresh_minutes (config secretRefreshMinutes)",
        id="refresh",
    ),
    pytest.param(with_(max_conections=5), "max_conections: unknown argument", id="typo"),
    pytest.param(with_(subnet_id=None), "subnet_id (config subnetId): is required", id="subnet"),
    pytest.param(
        with_(plan="pro", subdomain="acme", auth_mode="ip"),
        "auth_mode (config authMode): is ip: SMTP AUTH credentials are not used",
        id="ip-with-credentials",
    ),
    pytest.param(
        with_(sender_domain="localhost"),
        "sender_domain (config senderDomain): 'localhost' is not a domain name",
        id="sender-domain-syntax",
    ),
    pytest.param(
        with_(sender_domain="ip-10-0-1-5.ap-northeast-1.compute.internal"),
        "sender_domain (config senderDomain): ip-10-0-1-5.ap-northeast-1.compute.internal is one "
        "of the names it replaces",
        id="sender-domain-internal",
    ),
    pytest.param(
        with_(sender_domain="cmc-relay.internal"),
        "sender_domain (config senderDomain): cmc-relay.internal is one of the names it replaces",
        id="sender-domain-host-name",
    ),
    pytest.param(
        with_(rewrite_domains=["corp.internal"]),
        "rewrite_domains (config rewriteDomains): only applies with sender_domain",
        id="rewrite-without-sender-domain",
    ),
    pytest.param(
        with_(sender_domain="example.com", rewrite_domains="corp.internal"),
        "rewrite_domains (config rewriteDomains): must be a list of domain names",
        id="rewrite-not-a-list",
    ),
    pytest.param(
        with_(sender_domain="example.com", rewrite_domains=["corp.internal", "Corp.Internal"]),
        "rewrite_domains (config rewriteDomains): lists corp.internal more than once",
        id="rewrite-duplicate",
    ),
    pytest.param(
        with_(sender_domain="mail.example.com", rewrite_domains=["example.com"]),
        "rewrite_domains (config rewriteDomains): covers mail.example.com, a sender domain",
        id="rewrite-covers-sender-domain",
    ),
    pytest.param(
        with_(allowed_sender_domains=["example.com", "bad_domain.com"]),
        "allowed_sender_domains (config allowedSenderDomains): 'bad_domain.com' is not a domain",
        id="allowed-syntax",
    ),
    pytest.param(
        with_(allowed_sender_domains=["example.com", "example.com"]),
        "allowed_sender_domains (config allowedSenderDomains): lists example.com more than once",
        id="allowed-duplicate",
    ),
    pytest.param(
        with_(sender_domain="example.com", allowed_sender_domains=["example.org"]),
        "sender_domain (config senderDomain): example.com is not in allowed_sender_domains",
        id="sender-domain-not-allowed",
    ),
    pytest.param(
        with_(sender_domain="example.com", operator_email="ops"),
        "operator_email (config operatorEmail): 'ops' is not an e-mail address",
        id="operator-email-syntax",
    ),
    pytest.param(
        with_(sender_domain="example.com", operator_email="o$ps@example.com"),
        "operator_email (config operatorEmail): 'o$ps@example.com' is not an e-mail address",
        id="operator-email-dollar",
    ),
    pytest.param(
        with_(operator_email="ops@example.com"),
        "operator_email (config operatorEmail): needs sender_domain",
        id="operator-without-sender-domain",
    ),
    pytest.param(
        with_(sender_domain="example.com", operator_email="root@cmc-relay.internal"),
        "operator_email (config operatorEmail): must be a mailbox outside the relay",
        id="operator-is-local",
    ),
    pytest.param(
        with_(inbound_tls="required"),
        "inbound_tls (config inboundTls): got 'required'; allowed: may, encrypt, none",
        id="inbound-tls",
    ),
    pytest.param(
        with_(inbound_tls_secret_arn="arn:aws:s3:::bucket/cert.pem"),
        "inbound_tls_secret_arn (config inboundTlsSecretArn): 'arn:aws:s3:::bucket/cert.pem' is "
        "not a Secrets Manager secret ARN",
        id="inbound-tls-secret-arn-service",
    ),
    pytest.param(
        with_(inbound_tls="none", inbound_tls_secret_arn=SECRET_ARN),
        "inbound_tls_secret_arn (config inboundTlsSecretArn): only applies with inbound_tls may",
        id="inbound-tls-secret-arn-unused",
    ),
    pytest.param(
        with_(metrics_namespace="AWS/EC2"),
        "metrics_namespace (config metricsNamespace): 'AWS/EC2': AWS/ is reserved",
        id="namespace-aws",
    ),
    pytest.param(
        with_(metrics_namespace="CMC*Relay"),
        "metrics_namespace (config metricsNamespace): 'CMC*Relay' is not a CloudWatch namespace",
        id="namespace-syntax",
    ),
    pytest.param(
        with_(metrics_namespace=" "),
        "metrics_namespace (config metricsNamespace): ' ' is not a CloudWatch namespace",
        id="namespace-blank",
    ),
    pytest.param(
        with_(log_retention_days=31),
        "log_retention_days (config logRetentionDays): got 31; CloudWatch Logs accepts 1, 3, 5",
        id="retention-31",
    ),
    pytest.param(
        with_(log_retention_days=True),
        "log_retention_days (config logRetentionDays): got True",
        id="retention-bool",
    ),
    pytest.param(
        with_(log_kms_key_arn="alias/logs"),
        "log_kms_key_arn (config logKmsKeyArn): 'alias/logs' is not a KMS key ARN",
        id="log-kms-key",
    ),
    pytest.param(
        with_(alarms="yes"),
        "alarms: must be true or false; got 'yes'",
        id="alarms-not-bool",
    ),
    pytest.param(
        with_(alarm_topic_arn="arn:aws:sqs:ap-northeast-1:123456789012:alarms"),
        "alarm_topic_arn (config alarmTopicArn): 'arn:aws:sqs:ap-northeast-1:123456789012:alarms'"
        " is an ARN of sqs, not of SNS",
        id="topic-arn-service",
    ),
    pytest.param(
        with_(alarm_topic_arn="ops-alarms"),
        "alarm_topic_arn (config alarmTopicArn): 'ops-alarms' is not an ARN",
        id="topic-arn-not-arn",
    ),
    pytest.param(
        with_(alarm_email="ops@example"),
        "alarm_email (config alarmEmail): 'example' is not a domain name",
        id="alarm-email-domain",
    ),
    pytest.param(
        with_(alarm_email="ops"),
        "alarm_email (config alarmEmail): 'ops' is not an e-mail address",
        id="alarm-email-syntax",
    ),
    pytest.param(
        with_(
            alarm_email="ops@example.com",
            alarm_topic_arn="arn:aws:sns:ap-northeast-1:123456789012:alarms",
        ),
        "alarm_email (config alarmEmail): give either alarm_topic_arn or alarm_email",
        id="alarm-email-and-topic",
    ),
    pytest.param(
        with_(alarm_deferred_threshold=-1),
        "alarm_deferred_threshold (config alarmDeferredThreshold): must be between 0 and 1000000;"
        " got -1",
        id="deferred-negative",
    ),
    pytest.param(
        with_(alarm_oldest_message_minutes=0),
        "alarm_oldest_message_minutes (config alarmOldestMessageMinutes): must be between 1 and",
        id="oldest-zero",
    ),
    pytest.param(
        with_(alarm_bounced_threshold=-3),
        "alarm_bounced_threshold (config alarmBouncedThreshold): must be between 1 and 1000000;"
        " got -3",
        id="bounced-negative",
    ),
    pytest.param(
        with_(alarm_refused_threshold=2.5),
        "alarm_refused_threshold (config alarmRefusedThreshold): must be an integer; got 2.5",
        id="refused-fraction",
    ),
    pytest.param(
        with_(alarms=False, alarm_refused_threshold=10),
        "alarm_refused_threshold (config alarmRefusedThreshold): has no effect with alarms false",
        id="threshold-without-alarms",
    ),
    pytest.param(
        with_(alarms=False, alarm_topic_arn="arn:aws:sns:ap-northeast-1:123456789012:alarms"),
        "alarm_topic_arn (config alarmTopicArn): has no effect with alarms false",
        id="topic-without-alarms",
    ),
    pytest.param(
        with_(alarm_queue_free_percent=100),
        "alarm_queue_free_percent (config alarmQueueFreePercent): must be between 1 and 99; "
        "got 100",
        id="queue-free-all",
    ),
    pytest.param(
        with_(alarm_queue_free_percent=0),
        "alarm_queue_free_percent (config alarmQueueFreePercent): must be between 1 and 99",
        id="queue-free-zero",
    ),
    pytest.param(
        with_(alarm_reboot_required_days=8),
        "alarm_reboot_required_days (config alarmRebootRequiredDays): must be between 1 and 7; "
        "got 8",
        id="reboot-days-beyond-cloudwatch",
    ),
    pytest.param(
        with_(alarms=False, alarm_queue_free_percent=10),
        "alarm_queue_free_percent (config alarmQueueFreePercent): has no effect with alarms",
        id="queue-free-without-alarms",
    ),
    *(
        pytest.param(
            with_(reboot_window=window),
            f"reboot_window (config rebootWindow): {window!r} is not a maintenance window: "
            "DAYS HH:MM",
            id=f"reboot-window-{window}",
        )
        for window in BAD_WINDOWS
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_refused_with_a_message_naming_the_key(
    args: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        validate_args(args)
    assert message in str(error.value)


def test_defaults_follow_the_guide() -> None:
    settings, options = validate_args(BASE)
    assert (settings.plan, settings.auth_mode, settings.os) == ("trial", "sasl", "debian-13")
    assert settings.next_hop == "[sandbox.smtps.jp]:10025"
    # Not the guide's may: the service's certificate verified (issue 22).
    assert (settings.max_connections, settings.tls_level) == (10, "secure")
    assert options.instance_type == "t3.small"
    assert options.architecture == "x86_64"


@pytest.mark.parametrize(
    ("window", "calendar"),
    [
        ("Sun 03:00", "Sun *-*-* 03:00:00"),
        ("Sat,Sun 04:30", "Sat,Sun *-*-* 04:30:00"),
        ("daily 23:59", "*-*-* 23:59:00"),
    ],
)
def test_the_reboot_window_becomes_a_systemd_calendar(window: str, calendar: str) -> None:
    settings, _ = validate_args(with_(reboot_window=window))
    assert settings.reboot_calendar == calendar
    assert validate_args(BASE)[0].reboot_calendar is None  # by default: never


def test_monitoring_defaults_are_the_documented_ones() -> None:
    _, options = validate_args(BASE)
    monitoring = options.monitoring
    assert (monitoring.namespace, monitoring.log_retention_days) == ("CMCRelay", 30)
    assert monitoring.alarms is True
    assert (monitoring.alarm_topic_arn, monitoring.alarm_email) == (None, None)
    assert monitoring.log_kms_key_arn is None
    thresholds = monitoring.thresholds
    assert thresholds is not None  # every value known
    assert (thresholds.deferred_messages, thresholds.oldest_message_minutes) == (100, 30)
    assert (thresholds.bounced, thresholds.refused) == (1, 5)
    _, options = validate_args(with_(alarm_email="Ops@Example.COM"))
    assert options.monitoring.alarm_email == "Ops@example.com"  # parsed as operator_email is


@pytest.mark.parametrize(
    ("changes", "host"),
    [
        ({"plan": "trial"}, "sandbox.smtps.jp"),
        ({"plan": "standard"}, "te.smtps.jp"),
        ({"plan": "pro", "subdomain": "acme"}, "acme.smtps.jp"),
        ({"plan": "standard", "smtp_host": "te2.smtps.jp"}, "te2.smtps.jp"),
    ],
)
def test_plan_chooses_the_smtp_host(changes: dict[str, Any], host: str) -> None:
    settings, _ = validate_args(with_(**changes))
    assert settings.relay_host == host


def test_pro_ip_mode_needs_no_credentials() -> None:
    settings, _ = validate_args(
        with_(plan="pro", subdomain="acme", auth_mode="ip", credentials_secret_arn=None)
    )
    assert not settings.uses_sasl


@pytest.mark.parametrize("level", ["secure", "encrypt", "may"])
def test_ip_mode_may_opt_out_of_a_verified_service(level: str) -> None:
    """Without AUTH there is no key to protect: the weaker levels stay a choice in ip mode."""
    ip_mode = with_(plan="pro", subdomain="acme", auth_mode="ip", credentials_secret_arn=None)
    settings, _ = validate_args({**ip_mode, "tls_level": level})
    assert settings.tls_level == level


def test_graviton_instance_types_get_arm64_images() -> None:
    _, options = validate_args(with_(instance_type="t4g.small"))
    assert options.architecture == "arm64"


def test_duplicate_networks_are_listed_once() -> None:
    settings, _ = validate_args(with_(allowed_cidrs=["10.0.0.0/16", "10.0.0.0/16", "fd00::/8"]))
    assert settings.allowed_cidrs == ("10.0.0.0/16", "fd00::/8")


networks = st.one_of(
    st.ip_addresses(v=4).flatmap(
        lambda a: st.integers(1, 32).map(lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))
    ),
    st.ip_addresses(v=6).flatmap(
        lambda a: st.integers(1, 128).map(lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))
    ),
)


@given(st.lists(networks, min_size=1, max_size=8))
def test_every_allowed_network_and_only_those_may_relay(
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> None:
    settings = RelaySettings(allowed_cidrs=tuple(str(n) for n in allowed))
    mynetworks = postfix_parameters(settings)["mynetworks"].split()
    assert mynetworks[:2] == ["127.0.0.0/8", "[::1]/128"]
    parsed = [ipaddress.ip_network(n.replace("[", "").replace("]", "")) for n in mynetworks[2:]]
    assert set(parsed) == set(allowed)


def test_mail_policy_domains_are_normalised() -> None:
    """Domains ignore case, so they are compared and rendered lower-case; local parts keep it."""
    settings, _ = validate_args(
        with_(
            sender_domain="Example.COM",
            allowed_sender_domains=["EXAMPLE.com", "example.org"],
            operator_email="Ops@Example.NET",
        )
    )
    assert settings.sender_domain == "example.com"
    assert settings.allowed_sender_domains == ("example.com", "example.org")
    assert settings.operator_email == "Ops@example.net"
