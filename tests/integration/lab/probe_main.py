"""Run inside a probe's network namespace (no ping or DHCP client on these
machines, so plain sockets):

    probe_main.py listen PORT SECONDS      answer one UDP datagram ("pong:...")
    probe_main.py send ADDRESS PORT        send "ping", print the answer or "timeout"
    probe_main.py dhcp MAC SECONDS DEVICE  broadcast a DHCPDISCOVER for MAC, print
                                           the address of every offer ("none")
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import time


def dhcp(mac: str, seconds: float, device: str) -> None:
    chaddr = bytes(int(x, 16) for x in mac.split(":"))
    xid = random.getrandbits(32)
    # op, htype, hlen, hops, xid, secs, flags (broadcast), ciaddr, yiaddr,
    # siaddr, giaddr, chaddr, sname, file; then the magic cookie and
    # option 53 (message type) = DISCOVER.
    packet = struct.pack(
        "!BBBBIHHIIII16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0,
        chaddr.ljust(16, b"\0"), b"", b"",
    )  # fmt: skip
    packet += b"\x63\x82\x53\x63" + bytes([53, 1, 1, 255])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    s.bind(("0.0.0.0", 68))
    s.sendto(packet, ("255.255.255.255", 67))
    s.settimeout(0.2)
    offers = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = s.recv(2048)
        except TimeoutError:
            continue
        if len(data) >= 240 and struct.unpack("!I", data[4:8])[0] == xid:
            offers.append(socket.inet_ntoa(data[16:20]))
    print(" ".join(offers) or "none")


def main(argv: list[str]) -> None:
    if argv[0] == "dhcp":
        dhcp(argv[1], float(argv[2]), argv[3])
    elif argv[0] == "listen":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", int(argv[1])))
        s.settimeout(float(argv[2]))
        print("ready", flush=True)
        try:
            data, peer = s.recvfrom(100)
            s.sendto(b"pong:" + data, peer)
            print(f"got {data.decode()} from {peer[0]}")
        except TimeoutError:
            print("timeout")
    elif argv[0] == "send":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3.0)
        s.sendto(b"ping", (argv[1], int(argv[2])))
        try:
            print(s.recv(100).decode())
        except TimeoutError:
            print("timeout")


if __name__ == "__main__":
    main(sys.argv[1:])
