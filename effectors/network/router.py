"""A network's virtual router: a namespace on its network node, with nftables.

The router is a network namespace of its own on one host (the network
node) with two links: `tenant`, a veth whose other end is a port of the
network's bridge on that host (so it is on the network's L2 segment, which
VXLAN carries to every host), holding the router's address in the
network; and `public`, a veth whose other end is a port of the host's
bridge onto the public network, holding the router's source NAT address
and the public IPs of the network's rules. It forwards, and its one
nftables table (ruleset.py) does the NAT and the filtering.

ensure() observes and acts on the difference: a missing namespace, link,
address or route is made, a table whose rules differ from the spec's (by
their comments: a rule deleted with nft behind our back) is replaced as a
whole. It returns what it had to repair, so the reconciler can report it.
Commands on the host side run in the host's network namespace (a path for
nsenter, a name for `ip netns exec`, or None: ours); the router's own
namespace is named and reached with `ip netns exec`.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import threading
from collections import Counter
from typing import Any

import structlog

from cloud_engine.effectors.network import vxlan
from cloud_engine.effectors.network.router_spec import (
    PUBLIC_LINK,
    TENANT_LINK,
    RouterSpec,
    validate_router,
)
from cloud_engine.effectors.network.ruleset import expected_comments, render

log = structlog.get_logger("effectors.network.router")

NFT_TIMEOUT_S = 30.0


class RouterError(RuntimeError):
    """The router cannot be brought to its spec; the message says why."""


def _run(argv: list[str], netns: str | None) -> str:
    try:
        return vxlan.run(argv, netns)
    except vxlan.VxlanError as e:
        raise RouterError(str(e)) from e


def netns_names() -> set[str]:
    out = subprocess.run(
        ["ip", "-j", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {n["name"] for n in json.loads(out)} if out else set()


def _links(netns: str | None) -> dict[str, dict[str, Any]]:
    out = _run(["ip", "-j", "address", "show"], netns).strip()
    return {lk["ifname"]: lk for lk in (json.loads(out) if out else [])}


def _addresses(link: dict[str, Any]) -> set[str]:
    return {
        f"{a['local']}/{a['prefixlen']}"
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    }


def nft_apply(netns: str, script: str) -> None:
    """One nft transaction in the router's namespace: all of it or nothing."""
    proc = subprocess.run(  # argv list, the script on stdin: never a shell
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RouterError(f"nft in {netns} refused the ruleset: {proc.stderr.strip()}")


def table_comments(netns: str, table: str) -> Counter[str] | None:
    """The comments of the table's rules (`nft -j list table`), None without it."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "ip", table],
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        if "No such file" in proc.stderr or "does not exist" in proc.stderr:
            return None
        raise RouterError(f"nft list table {table} in {netns}: {proc.stderr.strip()}")
    found: Counter[str] = Counter()
    for item in json.loads(proc.stdout).get("nftables", []):
        rule = item.get("rule")
        if rule is not None:
            found[str(rule.get("comment", ""))] += 1
    return found


_CLONE_NEWNET = 0x40000000
_ETH_P_ARP = 0x0806


def _send_garp(netns: str, link: str, mac: str, addresses: list[str]) -> None:
    """In a thread of its own, which enters the router's namespace (setns
    is per thread) and ends there: the packet socket belongs to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            return
    finally:
        os.close(fd)
    hw = bytes.fromhex(mac.replace(":", ""))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((link, _ETH_P_ARP))
        for address in addresses:
            ip = socket.inet_aton(address)
            # A gratuitous ARP request: sender and target both the address.
            arp = bytes.fromhex("0001080006040001") + hw + ip + bytes(6) + ip
            s.send(b"\xff" * 6 + hw + _ETH_P_ARP.to_bytes(2, "big") + arp)


def announce(netns: str, link: str, addresses: list[str]) -> None:
    """Tell the segment at once that these addresses are here now (as
    CloudStack's router does with arping): a neighbour that asked for a
    public IP a moment before it was programmed would otherwise retry
    only after a second. Best effort: a lost announcement only delays."""
    if not addresses:
        return
    mac = _links(netns).get(link, {}).get("address")
    if not mac:
        return
    thread = threading.Thread(target=_send_garp, args=(netns, link, mac, addresses), daemon=True)
    thread.start()
    thread.join(5.0)


def _veth(spec: RouterSpec, host_end: str, inner: str, bridge: str, host_ns: str | None) -> bool:
    """The veth from the router's inner link to a bridge on the host."""
    host_links = _links(host_ns)
    if bridge not in host_links:
        raise RouterError(f"the host has no bridge {bridge}")
    changed = False
    if host_end not in host_links:
        mtu = str(host_links[bridge].get("mtu", 1500))
        _run(
            [
                "ip",
                "link",
                "add",
                host_end,
                "mtu",
                mtu,
                "type",
                "veth",
                "peer",
                "name",
                inner,
                "mtu",
                mtu,
                "netns",
                spec.netns,
            ],
            host_ns,
        )
        changed = True
        host_links = _links(host_ns)
    if host_links[host_end].get("master") != bridge:
        _run(["ip", "link", "set", host_end, "master", bridge], host_ns)
        changed = True
    if "UP" not in host_links[host_end].get("flags", []):
        _run(["ip", "link", "set", host_end, "up"], host_ns)
        changed = True
    return changed


def _inside(spec: RouterSpec) -> tuple[list[str], dict[str, list[str]]]:
    """Addresses, links and routes in the router's namespace: what was
    repaired, and the addresses added to each link."""
    repaired: list[str] = []
    added: dict[str, list[str]] = {}
    links = _links(spec.netns)
    tenant_prefix = spec.tenant_cidr.split("/")[1]
    public_prefix = spec.public_cidr.split("/")[1]
    wanted = {
        TENANT_LINK: {f"{spec.tenant_address}/{tenant_prefix}"},
        PUBLIC_LINK: {f"{spec.public_address}/{public_prefix}"}
        | {f"{ip}/32" for ip in spec.public_ips},
    }
    for name, addresses in wanted.items():
        link = links.get(name)
        if link is None:
            raise RouterError(f"router {spec.netns} has no link {name}")
        have = _addresses(link)
        for address in sorted(addresses - have):
            _run(["ip", "address", "add", address, "dev", name], spec.netns)
        for address in sorted(have - addresses):
            _run(["ip", "address", "del", address, "dev", name], spec.netns)
        if have != addresses:
            repaired.append(f"addresses of {name}")
        for dev in (name, "lo"):
            if "UP" not in links.get(dev, {}).get("flags", []):
                _run(["ip", "link", "set", dev, "up"], spec.netns)
        added[name] = sorted(a.split("/")[0] for a in addresses - have)
    forward = _run(["sysctl", "-n", "net.ipv4.ip_forward"], spec.netns).strip()
    if forward != "1":
        _run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], spec.netns)
    if spec.public_gateway is not None:
        routes = _run(["ip", "-j", "route", "show", "default"], spec.netns).strip()
        if not any(r.get("gateway") == spec.public_gateway for r in json.loads(routes or "[]")):
            _run(
                [
                    "ip",
                    "route",
                    "replace",
                    "default",
                    "via",
                    spec.public_gateway,
                    "dev",
                    PUBLIC_LINK,
                ],
                spec.netns,
            )
            repaired.append("default route")
    return repaired, added


def ensure(spec: RouterSpec, host_ns: str | None) -> list[str]:
    """Bring the router to spec; returns what was missing or different
    (empty: it was as asked, nothing done)."""
    validate_router(spec)
    repaired: list[str] = []
    if spec.netns not in netns_names():
        _run(["ip", "netns", "add", spec.netns], None)
        repaired.append("namespace")
    if _veth(spec, spec.host_tenant_link, TENANT_LINK, spec.tenant_bridge, host_ns):
        repaired.append("tenant link")
    if _veth(spec, spec.host_public_link, PUBLIC_LINK, spec.public_bridge, host_ns):
        repaired.append("public link")
    inside, added = _inside(spec)
    repaired += inside
    have = table_comments(spec.netns, spec.table)
    want = expected_comments(spec)
    if have != want:
        nft_apply(spec.netns, render(spec))
        if have is None:
            repaired.append("table")
        else:
            missing = sorted((want - have).keys())
            extra = sorted((have - want).keys())
            repaired.append(f"rules (missing {missing}, unexpected {extra})")
    # Announced once the table is in place: what answers them is programmed.
    for link, addresses in added.items():
        announce(spec.netns, link, addresses)
    if repaired:
        log.info("router_ensured", router=spec.netns, repaired=repaired)
    return repaired


def remove(netns: str, host_ns: str | None, host_links: tuple[str, ...]) -> bool:
    """Delete the router: its namespace (its table and links go with it) and
    the host ends of its veths, should the namespace be gone already."""
    changed = False
    if netns in netns_names():
        _run(["ip", "netns", "del", netns], None)
        changed = True
    present = _links(host_ns)
    for link in host_links:
        if link in present:
            try:
                vxlan.run(["ip", "link", "del", link], host_ns)
                changed = True
            except vxlan.VxlanError as e:
                # The kernel frees a deleted namespace's veths a moment later.
                if "Cannot find device" not in e.stderr:
                    raise RouterError(str(e)) from e
    if changed:
        log.info("router_removed", router=netns)
    return changed
