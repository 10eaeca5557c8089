"""Run a stand-in as its own process, e.g. inside a network namespace.

    PYTHONPATH=/path/to/repo python -m simworld.standin --config cfg.json --events events.jsonl

``--config`` is a JSON object of ``StandInConfig`` fields (defaults if omitted). Once it accepts
connections it prints ``LISTENING <host> <port>`` for each host, then ``CAFILE <path>``, on
stdout. It exits 0 on SIGTERM or SIGINT, after closing every session and the events file.

With ``--control-stdin`` it reads one JSON command per line from stdin and answers
``OK <op>`` or ``ERROR <reason>`` on stdout::

    {"op": "reconfigure", "changes": {"users": {"api-user": "fixed-key"}}}
    {"op": "down"}
    {"op": "up"}
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .config import StandInConfig
from .server import StandIn

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simworld.standin", description=__doc__)
    parser.add_argument("--config", type=Path, help="JSON object of StandInConfig fields")
    parser.add_argument("--events", type=Path, required=True, help="JSON-lines events file")
    parser.add_argument("--control-stdin", action="store_true", help="accept commands on stdin")
    args = parser.parse_args(argv)

    config = StandInConfig()
    if args.config is not None:
        config = StandInConfig.from_dict(json.loads(args.config.read_text(encoding="utf-8")))
    # Blocked before any thread starts, so every thread inherits the mask and only the
    # sigwait below ever receives these signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    with StandIn(config, events_path=args.events) as standin:
        for host in config.hosts:
            print(f"LISTENING {host} {standin.port}", flush=True)
        print(f"CAFILE {standin.ca_path}", flush=True)
        if args.control_stdin:
            threading.Thread(
                target=serve_control, args=(standin, sys.stdin, sys.stdout), daemon=True
            ).start()
        signal.sigwait(_STOP_SIGNALS)
    return 0


def serve_control(standin: StandIn, commands: TextIO, replies: TextIO) -> None:
    """Apply JSON commands, one per line, until ``commands`` ends."""
    for line in commands:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            op = command["op"]
            if op == "reconfigure":
                standin.reconfigure(**command.get("changes", {}))
            elif op == "down":
                standin.down()
            elif op == "up":
                standin.up()
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as error:
            print(f"ERROR {error}", file=replies, flush=True)
        else:
            print(f"OK {op}", file=replies, flush=True)


if __name__ == "__main__":
    sys.exit(main())
