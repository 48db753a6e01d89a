"""From the engine's views (effectors/desired.py) to what the drivers realise
on a host: storage pools and networks, which every kind of work may need.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import msgspec

from cloud_engine.effectors.desired import HostView, NetworkView, PoolView
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.network.spec import NetworkSpec, VxlanSpec
from cloud_engine.effectors.storage.spec import PoolSpec


class Unsupported(Exception):
    """The work cannot be done by this effector (e.g. a pool kind)."""


class Uplink(msgspec.Struct, frozen=True, kw_only=True):
    """How this effector's hosts reach each other for isolated networks: the
    underlay device and address, and the other hosts' VTEP addresses (VXLAN
    flood list). Without one, VLAN and VXLAN networks are realised as
    host-local isolated bridges (VMs on one host only)."""

    device: str
    local_ip: str
    peers: tuple[str, ...] = ()


def host_uplink(
    host: HostView, others: Iterable[HostView], fallback: Uplink | None = None
) -> Uplink | None:
    """The host's uplink from its registration: its underlay device and
    address, the other hosts' underlay addresses as VXLAN peers (every host
    of its zone that has one: a network may have VMs on any of them). A
    host registered without an underlay gets the effector's own (--uplink-*),
    or none: host-local bridges."""
    if host.underlay_address is None or host.underlay_device is None:
        return fallback
    peers = {
        h.underlay_address
        for h in others
        if h.id != host.id and h.underlay_address and h.underlay_address != host.underlay_address
    }
    return Uplink(
        device=host.underlay_device, local_ip=host.underlay_address, peers=tuple(sorted(peers))
    )


def gateway_mac(network: NetworkView) -> str:
    """The bridge MAC of a network, the same on every host (so a migrated
    guest's ARP entry for its gateway stays right). First octet 06: locally
    administered unicast, never a NIC's (engine.virtual.nic: 02)."""
    return ":".join(f"{b:02x}" for b in (0x06, 0xCE, *network.id.bytes[12:16]))


def pool_spec(names: Names, pool: PoolView) -> PoolSpec:
    parts = urlsplit(pool.url)
    if pool.url.startswith("/"):
        path = pool.url
    elif parts.scheme == "file":
        path = parts.path
    else:
        raise Unsupported(f"storage pool {pool.id}: {parts.scheme}:// pools are not served yet")
    return PoolSpec(name=names.pool(pool.id), kind="dir", path=path)


def network_spec(names: Names, network: NetworkView, uplink: Uplink | None = None) -> NetworkSpec:
    isolation = network.isolation.lower()  # the engine says VLAN / VXLAN / none
    if isolation not in ("none", "vlan", "vxlan"):
        raise Unsupported(f"network {network.id}: unknown isolation {network.isolation}")
    base = NetworkSpec(
        name=names.network(network.id),
        bridge=names.bridge(network.id),
        cidr=network.cidr,
        gateway=network.gateway,
        gateway_mac=gateway_mac(network),
        # Every NIC's address is the engine's, given to DHCP before its VM
        # starts: an unknown client has nothing to get, and on a network
        # that spans hosts it is another host's guest.
        dhcp_known_only=True,
        router=network.router_address,
    )
    if isolation == "none" or uplink is None:
        return base
    if network.tag is None:
        raise Unsupported(f"{network.isolation} network {network.id} has no tag yet")
    if isolation == "vlan":
        return msgspec.structs.replace(base, isolation="vlan", vlan=network.tag)
    vxlan = VxlanSpec(
        vni=network.tag,
        local_ip=uplink.local_ip,
        underlay_dev=uplink.device,
        remote_ips=tuple(p for p in uplink.peers if p != uplink.local_ip),
    )
    # 50 bytes of VXLAN headers come out of the underlay's 1500.
    return msgspec.structs.replace(base, isolation="vxlan", vxlan=vxlan, mtu=1450)
