"""The service's side of the rig: the stand-in for Customers Mail Cloud as a process in the
service namespace, controlled over its stdin."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from simworld.rig.network import Network
from simworld.rig.process import REPO, stop_process
from simworld.standin import (
    Event,
    MessageRecord,
    StandInConfig,
    Stats,
    messages_from_events,
    read_events,
    stats_from_events,
)


class StandInProcess:
    """``python -m simworld.standin`` in the service namespace, controlled over its stdin."""

    def __init__(self, network: Network, root: Path, config: StandInConfig) -> None:
        self.events_path = root / "standin-events.jsonl"
        self.is_down = False
        self._read_to = self._delivered = 0
        config_path = root / "standin.json"
        config_path.write_text(json.dumps(config.to_dict()))
        command = network.exec(
            network.service, sys.executable, "-m", "simworld.standin", "--config", config_path,
            "--events", self.events_path, "--control-stdin",
        )  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            line = self._next_line(30)
            while not line.startswith("CAFILE "):
                line = self._next_line(30)
        except BaseException:
            self.stop()
            raise
        self.ca_path = Path(line.split(" ", 1)[1])

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def _next_line(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"stand-in said nothing within {timeout} s") from None

    def command(self, op: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        reply = self._next_line(15)
        if reply != f"OK {op}":
            raise RuntimeError(f"stand-in {op}: {reply}")

    def reconfigure(self, **changes: Any) -> None:
        self.command("reconfigure", changes=changes)

    def down(self) -> None:
        self.command("down")
        self.is_down = True

    def up(self) -> None:
        self.command("up")
        self.is_down = False

    def events(self) -> list[Event]:
        return read_events(self.events_path)

    def stats(self) -> Stats:
        return stats_from_events(self.events())

    def messages(self) -> list[MessageRecord]:
        return messages_from_events(self.events())

    def delivered(self) -> int:
        """How many messages were accepted so far, reading the events file on from where the
        last call stopped: a long run's file is too big to parse at every poll."""
        with self.events_path.open("rb") as events:
            events.seek(self._read_to)
            chunk = events.read()
        whole = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._delivered += chunk.count(b'{"event": "message"', 0, whole)
        self._read_to += whole
        return self._delivered

    def stop(self) -> None:
        stop_process(self.process)
