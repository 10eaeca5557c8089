"""Count the relay's connections to the service as the wire sees them, run inside the relay's
network namespace by the rig:

    ip netns exec NS python wire_tap.py IFACE PORT

A connection is open from the client's SYN to the client's FIN or RST (or a RST from the
server); the server's own view of it lags behind (it closes a session only once it has
processed the FIN). Prints ``READY`` once capturing; on SIGTERM prints a JSON object with
``connections`` (SYNs seen) and ``peak_open``.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys

ETH_P_ALL = 0x0003  # outgoing packets reach only ETH_P_ALL taps
ETHERTYPE_IPV4 = b"\x08\x00"
TCP = 6
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04


class Stop(Exception):
    pass


def stop(signum: int, frame: object) -> None:
    raise Stop


def main() -> None:
    interface, port = sys.argv[1], int(sys.argv[2])
    tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # a burst must not drop
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
