"""DNS helpers run inside the rig's network namespaces (standalone: no imports from the repo).

ip netns exec NS python dns_tools.py delay LISTEN_IP UPSTREAM_IP DELAY_MS
    A forwarder that answers like UPSTREAM_IP, DELAY_MS later: an upstream resolver far
    away. Prints READY once listening; runs until terminated.
ip netns exec NS python dns_tools.py probe SERVER NAME ROUNDS PER_ROUND PAUSE_S
    ROUNDS times: wait PAUSE_S, then look NAME's A record up PER_ROUND times in a row at
    SERVER. Prints a JSON list of rounds, each a list of latencies in ms.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import sys
import time
from typing import cast

PORT = 53
TIMEOUT_S = 2.0


def a_query(name: str, query_id: int) -> bytes:
    """A DNS query for ``name``'s A record, recursion desired."""
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return header + labels + b"\x00" + struct.pack(">HH", 1, 1)


def answered(reply: bytes, query_id: int) -> bool:
    """The reply is for this query and says NOERROR with at least one answer."""
    if len(reply) < 12:
        return False
    reply_id, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    return reply_id == query_id and flags & 0x000F == 0 and answers > 0


def probe(server: str, name: str, rounds: int, per_round: int, pause_s: float) -> None:
    results = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        for _ in range(rounds):
            time.sleep(pause_s)
            latencies = []
            for _ in range(per_round):
                query_id = random.randrange(1 << 16)
                started = time.perf_counter()
                sock.sendto(a_query(name, query_id), (server, PORT))
                while not answered(sock.recv(4096), query_id):
                    pass  # a late answer to an earlier query
                latencies.append(1000 * (time.perf_counter() - started))
            results.append(latencies)
    json.dump(results, sys.stdout)


class _Forwarder(asyncio.DatagramProtocol):
    def __init__(self, upstream: str, delay_s: float) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's transport is not registered as a DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().create_task(self.forward(data, addr))

    async def forward(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.delay_s)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (self.upstream, PORT))
            await loop.sock_sendall(sock, data)
            try:
                reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), TIMEOUT_S)
            except TimeoutError:
                return
        assert self.transport is not None
        self.transport.sendto(reply, addr)


async def delay(listen: str, upstream: str, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(
        lambda: _Forwarder(upstream, delay_ms / 1000), local_addr=(listen, PORT)
    )
    print("READY", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "delay":
        asyncio.run(delay(args[0], args[1], float(args[2])))
    elif command == "probe":
        probe(args[0], args[1], int(args[2]), int(args[3]), float(args[4]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
