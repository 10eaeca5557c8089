"""A TCP proxy that delays every byte by a fixed time in each direction: a network's latency
where the kernel has no netem (``tc qdisc ... netem`` needs sch_netem, which this kernel lacks).

    ip netns exec NS python delay_proxy.py ONE_WAY_MS SOURCE LISTEN=TARGET [LISTEN=TARGET ...]

Each ``LISTEN`` (``ip:port``) accepts connections and forwards them to its ``TARGET``
(``ip:port``) from the address ``SOURCE``, so the server sees one client address whatever the
listener, as it would see the relay's. Data read from one side is written to the other
``ONE_WAY_MS`` after it was read, in order; a half close travels the same way. Prints ``READY``
once listening; runs until killed.

Threads, not asyncio: each wait ends within a few hundred microseconds of its due time, where
an event loop's timers can be a millisecond late (the whole of a 2 ms round trip's half).
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time

_CHUNK = 65536


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def _pipe(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
    """Read from ``source``; a second thread writes each chunk to ``sink`` once due."""
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def write() -> None:
        try:
            while True:
                due, data = chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except OSError:
            for s in (source, sink):
                s.close()

    threading.Thread(target=write, daemon=True).start()
    try:
        while True:
            data = source.recv(_CHUNK)
            chunks.put((time.monotonic() + delay_s, data))
            if not data:
                return
    except OSError:
        chunks.put((time.monotonic() + delay_s, b""))


def _connect(client: socket.socket, target: tuple[str, int], source: str, delay_s: float) -> None:
    """Open the server's side one way's delay after the client connected, as a SYN would
    arrive: otherwise a new session could reach the server before the delayed close of the
    session it replaces, and the server would count both against its session cap."""
    time.sleep(delay_s)
    server = socket.socket()
    server.bind((source, 0))
    try:
        server.connect(target)
    except OSError:
        client.close()
        server.close()
        return
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for a, b in ((client, server), (server, client)):
        threading.Thread(target=_pipe, args=(a, b, delay_s), daemon=True).start()


def _serve(listener: socket.socket, target: tuple[str, int], source: str, delay_s: float) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=_connect, args=(client, target, source, delay_s), daemon=True
        ).start()


def main(argv: list[str]) -> None:
    delay_s = float(argv[0]) / 1000
    source = argv[1]
    for pair in argv[2:]:
        listen, target = pair.split("=")
        listener = socket.create_server(_address(listen), backlog=128)
        threading.Thread(
            target=_serve, args=(listener, _address(target), source, delay_s), daemon=True
        ).start()
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
