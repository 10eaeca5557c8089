"""The relay's CloudWatch metrics: one definition for the on-host publisher, the alarms and the
dashboard.

The publisher is a script on the host and cannot import this module: the payload carries
``publisher_config`` as JSON, so the names it publishes are the ones the alarms and the
dashboard name. Every host publishes each metric once a minute with the dimensions
``Relay`` (which relay) and ``InstanceId`` (which host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

DEFAULT_NAMESPACE: Final = "CMCRelay"
RELAY_DIMENSION: Final = "Relay"
INSTANCE_DIMENSION: Final = "InstanceId"
# The publisher's timer; alarms and the dashboard read the metrics at this period.
PERIOD_SECONDS: Final = 60

Kind = Literal["gauge", "count"]


@dataclass(frozen=True)
class Metric:
    """One metric: ``key`` is what the publisher computes, ``name`` what CloudWatch shows."""

    key: str
    name: str
    unit: str  # a CloudWatch StandardUnit
    kind: Kind  # gauge: a level when sampled; count: events since the previous sample
    description: str

    @property
    def statistic(self) -> str:
        """How a period of samples adds up: the level's maximum, the events' sum."""
        return "Maximum" if self.kind == "gauge" else "Sum"


METRICS: Final = (
    Metric("queue.active", "ActiveMessages", "Count", "gauge", "messages in the active queue"),
    Metric(
        "queue.deferred", "DeferredMessages", "Count", "gauge", "messages in the deferred queue"
    ),
    Metric("queue.hold", "HoldMessages", "Count", "gauge", "messages on hold"),
    Metric("queue.incoming", "IncomingMessages", "Count", "gauge", "messages being received"),
    Metric(
        "queue.oldest_age",
        "OldestMessageAge",
        "Seconds",
        "gauge",
        "age of the oldest queued message (0 when the queue is empty)",
    ),
    Metric("delivery.sent", "Sent", "Count", "count", "deliveries the service accepted"),
    Metric(
        "delivery.deferred", "Deferrals", "Count", "count", "delivery attempts deferred for retry"
    ),
    Metric("delivery.bounced", "Bounced", "Count", "count", "messages returned undeliverable"),
    Metric(
        "delivery.sent_without_tls",
        "SentWithoutTls",
        "Count",
        "count",
        "deliveries the service accepted over a session without TLS (only tlsLevel may allows it)",
    ),
    Metric(
        "delivery.sent_unverified_tls",
        "SentUnverifiedTls",
        "Count",
        "count",
        "deliveries the service accepted over TLS whose certificate was not verified for its "
        "name (tlsLevel encrypt or may)",
    ),
    Metric(
        "session.refused",
        "SessionsRefused",
        "Count",
        "count",
        "sessions the service refused (421 greeting or reply)",
    ),
    Metric(
        "session.tls_failed",
        "TlsNotEstablished",
        "Count",
        "count",
        "sessions where TLS was not established with the service",
    ),
    Metric(
        "session.auth_failed",
        "AuthFailures",
        "Count",
        "count",
        "SMTP AUTH refused by the service (535)",
    ),
    Metric(
        "host.queue_free_percent",
        "QueueFreePercent",
        "Percent",
        "gauge",
        "free space of the queue's file system (Postfix's queue_directory)",
    ),
    Metric(
        "host.reboot_required",
        "RebootRequired",
        "None",
        "gauge",
        "1 while installed updates wait for a reboot, else 0",
    ),
)
BY_KEY: Final = {metric.key: metric for metric in METRICS}


def metric(key: str) -> Metric:
    return BY_KEY[key]


def publisher_config(namespace: str, relay: str) -> dict[str, Any]:
    """What the on-host publisher reads (``/etc/cmc-relay/metrics.json``): where to publish,
    the relay's dimension, and each metric's name and unit by the key it computes."""
    return {
        "namespace": namespace,
        "dimensions": {RELAY_DIMENSION: relay},
        "instance_dimension": INSTANCE_DIMENSION,
        "metrics": {m.key: {"name": m.name, "unit": m.unit, "kind": m.kind} for m in METRICS},
    }


@dataclass(frozen=True)
class Monitoring:
    """Where one relay's hosts report: the metrics' namespace, the ``Relay`` dimension's value
    and the CloudWatch Logs group of the mail log. The component names them; the payload
    carries them to the publisher and the CloudWatch agent."""

    namespace: str = DEFAULT_NAMESPACE
    relay: str = "cmc-relay"
    log_group: str = "/cmc-relay/cmc-relay"

    def publisher_config(self) -> dict[str, Any]:
        return publisher_config(self.namespace, self.relay)


# A host rendered outside a component (the local sandbox, test hosts) reports here.
DEFAULT_MONITORING: Final = Monitoring()
