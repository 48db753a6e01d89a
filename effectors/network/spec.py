"""What the network driver is asked to realise, and what it observes.

Specs are validated before anything touches the host, so a bad request fails
with a SpecError naming the field instead of a libvirt or iproute2 message.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import msgspec

Isolation = Literal["none", "vlan", "vxlan"]

# Linux refuses interface names longer than IFNAMSIZ - 1.
MAX_IFNAME = 15
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?$")


class SpecError(ValueError):
    """A spec the driver refuses to act on; field names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class VxlanSpec(msgspec.Struct, frozen=True, kw_only=True):
    vni: int
    local_ip: str
    underlay_dev: str
    remote_ips: tuple[str, ...] = ()
    port: int = 4789


class NetworkSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # libvirt network name
    bridge: str  # <= 15 chars
    cidr: str
    gateway: str
    dhcp: bool = True
    isolation: Isolation = "none"
    vlan: int | None = None
    vxlan: VxlanSpec | None = None
    mtu: int | None = None
    # The bridge's MAC; one network gets the same on every host, so a guest
    # moved to another host finds its gateway at the address it knew.
    gateway_mac: str | None = None
    # DHCP answers only the MACs given to it (add_dhcp_host) and ignores
    # every other client, instead of leasing from its ranges: of the DHCP
    # servers of a network that spans hosts, only the one on the guest's
    # host knows the guest.
    dhcp_known_only: bool = False
    # The default route DHCP gives guests when it is not the bridge's own
    # address: the network's virtual router (effectors/network/router.py).
    router: str | None = None


class DhcpHost(msgspec.Struct, frozen=True, kw_only=True):
    mac: str
    ip: str
    hostname: str | None = None


class NetworkState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    exists: bool
    active: bool
    bridge: str | None = None
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    vxlan_attached: bool = False


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    changed: bool
    state: NetworkState


def check_ifname(field: str, name: str) -> None:
    if not name or len(name) > MAX_IFNAME:
        raise SpecError(field, f"{name!r} must be 1..{MAX_IFNAME} characters (Linux IFNAMSIZ)")
    if not _IFNAME.match(name) or name in (".", ".."):
        raise SpecError(field, f"{name!r} may only hold letters, digits, '_', '.', '-'")


def check_ipv4(field: str, value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as e:
        raise SpecError(field, f"{value!r} is not an IPv4 address") from e


def network_of(spec: NetworkSpec) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(spec.cidr, strict=True)
    except ValueError as e:
        raise SpecError("cidr", f"{spec.cidr!r} is not a network address/prefix ({e})") from e
    if not isinstance(net, ipaddress.IPv4Network):
        # DHCP host entries and ranges below are written for IPv4 only.
        raise SpecError("cidr", f"{spec.cidr!r}: only IPv4 networks are supported")
    return net


def validate_vxlan(vx: VxlanSpec) -> None:
    if not 1 <= vx.vni <= 16_777_215:
        raise SpecError("vxlan.vni", f"{vx.vni} is outside 1..16777215")
    if not 1 <= vx.port <= 65_535:
        raise SpecError("vxlan.port", f"{vx.port} is outside 1..65535")
    local = check_ipv4("vxlan.local_ip", vx.local_ip)
    check_ifname("vxlan.underlay_dev", vx.underlay_dev)
    for remote in vx.remote_ips:
        if check_ipv4("vxlan.remote_ips", remote) == local:
            raise SpecError("vxlan.remote_ips", f"{remote} is the local VTEP address")
    if len(set(vx.remote_ips)) != len(vx.remote_ips):
        raise SpecError("vxlan.remote_ips", "duplicate remote addresses")


def validate_network(spec: NetworkSpec) -> None:
    """Raise SpecError for the first thing wrong with spec."""
    if not spec.name or len(spec.name) > 200 or "/" in spec.name:
        raise SpecError("name", f"{spec.name!r} is not a usable libvirt network name")
    check_ifname("bridge", spec.bridge)
    net = network_of(spec)
    gateway = check_ipv4("gateway", spec.gateway)
    # /31 and /32 have no network or broadcast address to avoid (RFC 3021).
    edges = (net.network_address, net.broadcast_address) if net.prefixlen < 31 else ()
    if gateway not in net or gateway in edges:
        raise SpecError("gateway", f"{spec.gateway} is not a host address of {spec.cidr}")
    if spec.dhcp and net.num_addresses < 4:
        raise SpecError("cidr", f"{spec.cidr} leaves no addresses for DHCP besides the gateway")
    if spec.router is not None and check_ipv4("router", spec.router) not in net:
        raise SpecError("router", f"{spec.router} is not an address of {spec.cidr}")
    if spec.gateway_mac is not None and not _MAC.match(spec.gateway_mac):
        raise SpecError("gateway_mac", f"{spec.gateway_mac!r} is not a lower-case MAC")
    if spec.mtu is not None and not 68 <= spec.mtu <= 65_535:
        raise SpecError("mtu", f"{spec.mtu} is outside 68..65535")
    if spec.vlan is not None and not 1 <= spec.vlan <= 4094:
        raise SpecError("vlan", f"{spec.vlan} is outside 1..4094")
    if spec.isolation == "vlan" and spec.vlan is None:
        raise SpecError("vlan", "isolation='vlan' needs a vlan tag")
    if spec.isolation != "vlan" and spec.vlan is not None:
        raise SpecError("vlan", f"a vlan tag needs isolation='vlan', not {spec.isolation!r}")
    if spec.isolation == "vxlan":
        if spec.vxlan is None:
            raise SpecError("vxlan", "isolation='vxlan' needs a vxlan spec")
        validate_vxlan(spec.vxlan)
    elif spec.vxlan is not None:
        raise SpecError("vxlan", f"a vxlan spec needs isolation='vxlan', not {spec.isolation!r}")


def validate_dhcp_host(host: DhcpHost) -> None:
    if not _MAC.match(host.mac):
        raise SpecError("mac", f"{host.mac!r} is not a lower-case colon-separated MAC")
    check_ipv4("ip", host.ip)
    if host.hostname is not None and not _HOSTNAME.match(host.hostname):
        raise SpecError("hostname", f"{host.hostname!r} is not a valid host name label")


def normalize_mac(mac: str) -> str:
    return mac.strip().lower().replace("-", ":")
