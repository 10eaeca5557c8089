"""The delaying proxy the latency benchmarks run through (simworld/delay_proxy.py), on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from simworld import delay_proxy

ONE_WAY_MS = 50


@pytest.fixture
def server() -> Iterator[tuple[socket.socket, list[tuple[str, float]]]]:
    """A loopback server that echoes and records, in order, each connection's arrival and
    end of data."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[tuple[str, float]] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)
            seen.append(("eof", time.monotonic()))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen.append(("connect", time.monotonic()))
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener, seen
    listener.close()


@pytest.fixture
def proxy(server: tuple[socket.socket, list[tuple[str, float]]]) -> Iterator[tuple[str, int]]:
    with socket.socket() as probe:  # a free port for the proxy to listen on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = f"127.0.0.1:{server[0].getsockname()[1]}"
    process = subprocess.Popen(
        [sys.executable, delay_proxy.__file__, str(ONE_WAY_MS), "127.0.0.1",
         f"127.0.0.1:{port}={target}"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "READY"
    yield ("127.0.0.1", port)
    process.kill()
    process.wait()


def test_each_direction_is_delayed(proxy: tuple[str, int]) -> None:
    with socket.create_connection(proxy) as client:
        sent = time.monotonic()
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        # Out and back through the proxy: at least two one-way delays.
        assert time.monotonic() - sent >= 2 * ONE_WAY_MS / 1000


def test_a_new_session_does_not_overtake_the_close_before_it(
    proxy: tuple[str, int], server: tuple[socket.socket, list[tuple[str, float]]]
) -> None:
    """A client that closes one session and opens the next soon after: the server sees the
    first session end before the next begins, as over a real link where both travel one way's
    delay (the session cap counts open sessions)."""
    seen = server[1]
    first = socket.create_connection(proxy)
    first.sendall(b"x")
    assert first.recv(1) == b"x"
    first.shutdown(socket.SHUT_WR)
    time.sleep(ONE_WAY_MS / 1000 / 2)
    with socket.create_connection(proxy) as second:
        second.sendall(b"y")
        assert second.recv(1) == b"y"
    first.close()
    events = [name for name, _ in seen]
    assert events[:3] == ["connect", "eof", "connect"], events
