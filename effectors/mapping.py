"""From the engine's views (effectors/desired.py) to what the drivers realise
on a host: storage pools and networks, which every kind of work may need.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from cloud_engine.effectors.desired import NetworkView, PoolView
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
