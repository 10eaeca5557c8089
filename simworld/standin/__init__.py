"""A stand-in for Customers Mail Cloud's relay endpoint (port 10025), for tests and benchmarks.

Real Postfix can relay to it: it offers STARTTLS with a test CA (``StandIn.ca_path``) and
PIPELINING, checks AUTH PLAIN/LOGIN against API users, applies the console's session cap,
receiving interval, size limit and acceptable network, injects faults, and records every
message and counter.

In-process::

    from simworld.standin import StandIn, StandInConfig

    with StandIn(StandInConfig(users={"api-user": "api-key"})) as standin:
        ...  # relay to 127.0.0.1:standin.port
        standin.wait_for_messages(1)

As a process (e.g. under ``ip netns exec``), with the repo root on ``PYTHONPATH``; the working
directory does not matter::

    PYTHONPATH=/path/to/repo python -m simworld.standin --config cfg.json --events events.jsonl

See ``__main__`` for its output and control protocol, ``records`` for the event schema.
"""

from .config import AUTH_MODES, AuthMode, StandInConfig
from .records import (
    Event,
    MessageRecord,
    Stats,
    messages_from_events,
    read_events,
    stats_from_events,
)
from .server import StandIn

__all__ = [
    "AUTH_MODES",
    "AuthMode",
    "Event",
    "MessageRecord",
    "StandIn",
    "StandInConfig",
    "Stats",
    "messages_from_events",
    "read_events",
    "stats_from_events",
]
