"""What the lab tests look at: domains, processes, reachability, leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import libvirt

from cloud_engine.lab import Lab
from cloud_engine.lab.model import Layout

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# A TCP connect to a closed port: refused (RST) when the address answers,
# a timeout or "unreachable" when nothing does. Needs nothing listening.
_PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[2]))
try:
    s.connect((sys.argv[1], 9))
    print("reachable")
except ConnectionRefusedError:
    print("reachable")
except OSError as e:
    print(f"unreachable {e}")
"""


def domain_name() -> str:
    return f"ce-lab-t{uuid.uuid4().hex[:8]}"


def domain_xml(name: str, mib: int = 128) -> str:
    # Diskless: SeaBIOS finds nothing to boot and idles, which is all a
    # migration or a power cut needs.
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>{mib}</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
        "<devices><serial type='pty'/></devices></domain>"
    )


def names(uri: str) -> set[str]:
    conn = libvirt.open(uri)
    try:
        return {d.name() for d in conn.listAllDomains()}
    finally:
        conn.close()


def qemu_pids(domain: str) -> list[int]:
    """QEMU processes of a domain (libvirt names them guest=<name>)."""
    return pids_with(f"guest={domain},")


def pids_with(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def reachable(lab: Lab, source: str, address: str, timeout_s: float = 2.0) -> bool:
    done = lab.run_in(source, [sys.executable, "-c", _PROBE, address, str(timeout_s)])
    assert done.returncode == 0, done.stderr
    return done.stdout.startswith("reachable")


def leftovers(state_dir: Path) -> list[str]:
    """Anything of the lab still on the machine: namespaces, links, nftables
    tables, mounts, processes."""
    layout = Layout(state_dir)
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line}" for line in netns.splitlines() if layout.netns_prefix in line]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {line}" for line in links.splitlines() if layout.lab_id in line]
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    prefix = str(layout.subnet.network_address).rsplit(".", 1)[0] + "."
    found += [f"address {line}" for line in addresses.splitlines() if prefix in line]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [f"nft {line}" for line in tables.splitlines() if layout.lab_id in line]
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount {m}" for m in mounts if str(state_dir) in m or layout.netns_prefix in m]
    found += [f"process {pid}" for pid in pids_with(str(state_dir))]
    return found
