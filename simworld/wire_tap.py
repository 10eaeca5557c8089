"""Count the relay's connections to the service as the wire sees them, run inside the relay's
network namespace by the rig:

    ip netns exec NS python wire_tap.py IFACE PORT

A connection is open from the client's SYN to the client's FIN or RST (or a RST from the
server); the server's own view of it lags behind (it closes a session only once it has
processed the FIN). Prints ``READY`` once capturing; on SIGTERM prints a JSON object with
``connections`` (SYNs seen) and ``peak_open``.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import struct
import sys

ETH_P_ALL = 0x0003  # outgoing packets reach only ETH_P_ALL taps
ETHERTYPE_IPV4 = b"\x08\x00"
TCP = 6
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
SO_ATTACH_FILTER = 26
# A classic BPF socket filter: only IPv4 TCP segments with SYN, FIN or RST reach this process.
# Waking Python for every data segment cost the CPU the benchmarks measure (a few % at 50 ms).
FLAGS_ONLY = (
    (0x28, 0, 0, 12),  # ldh [12]: ethertype
    (0x15, 0, 6, 0x0800),  # IPv4, else drop
    (0x30, 0, 0, 23),  # ldb [23]: IP protocol
    (0x15, 0, 4, TCP),  # TCP, else drop
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): X = IP header length
    (0x50, 0, 0, 27),  # ldb [x+27]: TCP flags (14 + 13)
    (0x45, 0, 1, SYN | FIN | RST),  # jset: any of them, else drop
    (0x06, 0, 0, 0x40000),  # ret: accept
    (0x06, 0, 0, 0),  # ret: drop
)


class Stop(Exception):
    pass


def stop(signum: int, frame: object) -> None:
    raise Stop


def bpf_program(instructions: tuple[tuple[int, int, int, int], ...]) -> bytes:
    """``struct sock_fprog`` for setsockopt: its length and a pointer to the instructions,
    which ``ctypes`` keeps alive with the module."""
    code = b"".join(struct.pack("HBBI", *i) for i in instructions)
    _FILTERS.append(buffer := ctypes.create_string_buffer(code, len(code)))
    return struct.pack("HL", len(instructions), ctypes.addressof(buffer))


_FILTERS: list[ctypes.Array[ctypes.c_char]] = []


def main() -> None:
    interface, port = sys.argv[1], int(sys.argv[2])
    tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # a burst must not drop
    tap.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bpf_program(FLAGS_ONLY))
    tap.bind((interface, 0))
    signal.signal(signal.SIGTERM, stop)
    print("READY", flush=True)
    open_now: set[tuple[bytes, int]] = set()
    connections = peak = 0
    try:
        while True:
            frame = tap.recv(128)
            if frame[12:14] != ETHERTYPE_IPV4 or frame[23] != TCP:
                continue
            ip = frame[14:]
            tcp = ip[(ip[0] & 0x0F) * 4 :]
            source_port, dest_port = struct.unpack(">HH", tcp[:4])
            flags = tcp[13]
            if dest_port == port:  # client -> service
                client = (ip[12:16], source_port)
                if flags & SYN and not flags & ACK and client not in open_now:
                    open_now.add(client)
                    connections += 1
                    peak = max(peak, len(open_now))
                elif flags & (FIN | RST):
                    open_now.discard(client)
            elif source_port == port and flags & RST:
                open_now.discard((ip[16:20], dest_port))
    except Stop:
        json.dump({"connections": connections, "peak_open": peak}, sys.stdout)


if __name__ == "__main__":
    main()
