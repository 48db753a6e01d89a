"""libvirt network XML, built and read with ElementTree.

Values from specs only ever become attribute values or text of elements built
here, so a hostile name cannot inject markup.

What is expressed: an isolated network (no <forward>): guests reach each
other and the host on the bridge, nothing is routed or NATed off it; the
VXLAN device enslaved to the bridge is the only way out. A spec's
gateway_mac fixes the bridge's MAC; dhcp_known_only adds the dnsmasq option
`dhcp-ignore=tag:!known` (libvirt's dnsmasq XML namespace), so dnsmasq
stays silent (no offer, no ACK, no NAK) to every client without a <host>
entry. Neither is compared with an existing definition: they are set when
a network is defined. For isolation='vlan'
the tag is written as <vlan><tag id='N'/></vlan>; libvirt 9.0 refuses that on
any Linux-bridge network (only Open vSwitch and hostdev networks take it), so
the driver reports VlanUnsupported instead of defining an untagged network.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import msgspec

from cloud_engine.effectors.network.spec import DhcpHost, NetworkSpec, network_of, normalize_mac


class ParsedNetwork(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a defined network the driver compares against a spec."""

    name: str
    bridge: str | None
    address: str | None
    prefix: int | None
    dhcp: bool
    mtu: int | None
    vlan: int | None
    forward: str | None
    dhcp_hosts: tuple[DhcpHost, ...]


def dhcp_ranges(spec: NetworkSpec) -> list[tuple[str, str]]:
    """Every host address of the CIDR except the gateway, as contiguous ranges."""
    net = network_of(spec)
    gateway = ipaddress.IPv4Address(spec.gateway)
    first, last = net.network_address + 1, net.broadcast_address - 1
    ranges = []
    if gateway > first:
        ranges.append((first, gateway - 1))
    if gateway < last:
        ranges.append((gateway + 1, last))
    return [(str(a), str(b)) for a, b in ranges]


DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"
ET.register_namespace("dnsmasq", DNSMASQ_NS)
# dnsmasq tags a client "known" when a dhcp-host line matches it.
IGNORE_UNKNOWN = "dhcp-ignore=tag:!known"


def build_network_xml(spec: NetworkSpec) -> str:
    net = network_of(spec)
    root = ET.Element("network")
    ET.SubElement(root, "name").text = spec.name
    # stp off: the bridge has one uplink at most (the VXLAN port), so STP only
    # delays new ports by the forwarding delay.
    ET.SubElement(root, "bridge", {"name": spec.bridge, "stp": "off", "delay": "0"})
    if spec.gateway_mac is not None:
        ET.SubElement(root, "mac", {"address": spec.gateway_mac})
    if spec.mtu is not None:
        ET.SubElement(root, "mtu", {"size": str(spec.mtu)})
    if spec.isolation == "vlan" and spec.vlan is not None:
        vlan = ET.SubElement(root, "vlan")
        ET.SubElement(vlan, "tag", {"id": str(spec.vlan)})
    ip = ET.SubElement(root, "ip", {"address": spec.gateway, "prefix": str(net.prefixlen)})
    if spec.dhcp:
        dhcp = ET.SubElement(ip, "dhcp")
        for start, end in dhcp_ranges(spec):
            ET.SubElement(dhcp, "range", {"start": start, "end": end})
        values = [IGNORE_UNKNOWN] if spec.dhcp_known_only else []
        if spec.router is not None:
            # Guests leave through the virtual router, not the bridge.
            values.append(f"dhcp-option=option:router,{spec.router}")
        if values:
            options = ET.SubElement(root, f"{{{DNSMASQ_NS}}}options")
            for value in values:
                ET.SubElement(options, f"{{{DNSMASQ_NS}}}option", {"value": value})
    return ET.tostring(root, encoding="unicode")


def ignores_unknown(xml: str) -> bool:
    """Whether a defined network's dnsmasq ignores clients it has no entry for."""
    found = ET.fromstring(xml).findall(f"{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option")
    return any(o.get("value") == IGNORE_UNKNOWN for o in found)


def dhcp_host_xml(host: DhcpHost) -> str:
    attrs = {"mac": host.mac, "ip": host.ip}
    if host.hostname is not None:
        attrs["name"] = host.hostname
    return ET.tostring(ET.Element("host", attrs), encoding="unicode")


def _int(value: str | None) -> int | None:
    return int(value) if value is not None else None


def parse_network_xml(xml: str) -> ParsedNetwork:
    root = ET.fromstring(xml)
    bridge = root.find("bridge")
    mtu = root.find("mtu")
    tag = root.find("vlan/tag")
    forward = root.find("forward")
    # The first IPv4 <ip> is the one the driver defines and DHCP updates hit.
    ip = next(
        (e for e in root.findall("ip") if e.get("family", "ipv4") == "ipv4"),
        None,
    )
    address = prefix = None
    dhcp = False
    hosts: list[DhcpHost] = []
    if ip is not None:
        address = ip.get("address")
        prefix = _int(ip.get("prefix"))
        if prefix is None and ip.get("netmask") and address:
            prefix = ipaddress.IPv4Network(f"{address}/{ip.get('netmask')}", False).prefixlen
        dhcp_el = ip.find("dhcp")
        dhcp = dhcp_el is not None
        for h in dhcp_el.findall("host") if dhcp_el is not None else []:
            mac, addr = h.get("mac"), h.get("ip")
            if mac and addr:
                hosts.append(DhcpHost(mac=normalize_mac(mac), ip=addr, hostname=h.get("name")))
    return ParsedNetwork(
        name=root.findtext("name") or "",
        bridge=bridge.get("name") if bridge is not None else None,
        address=address,
        prefix=prefix,
        dhcp=dhcp,
        mtu=_int(mtu.get("size")) if mtu is not None else None,
        vlan=_int(tag.get("id")) if tag is not None else None,
        forward=(forward.get("mode") or "nat") if forward is not None else None,
        dhcp_hosts=tuple(hosts),
    )


def differences(spec: NetworkSpec, actual: ParsedNetwork) -> list[str]:
    """What a defined network has that the spec does not ask for (empty: same)."""
    net = network_of(spec)
    wanted = {
        "bridge": spec.bridge,
        "address": spec.gateway,
        "prefix": net.prefixlen,
        "dhcp": spec.dhcp,
        "mtu": spec.mtu,
        "vlan": spec.vlan if spec.isolation == "vlan" else None,
        "forward": None,
    }
    return [
        f"{key}: defined {getattr(actual, key)!r}, wanted {value!r}"
        for key, value in wanted.items()
        if getattr(actual, key) != value
    ]
