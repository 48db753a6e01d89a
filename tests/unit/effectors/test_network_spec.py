"""Network spec validation and libvirt XML, without touching a host."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import msgspec
import pytest

from cloud_engine.effectors.network.network_xml import (
    build_network_xml,
    dhcp_host_xml,
    dhcp_ranges,
    differences,
    parse_network_xml,
)
from cloud_engine.effectors.network.spec import (
    DhcpHost,
    NetworkSpec,
    SpecError,
    VxlanSpec,
    validate_dhcp_host,
    validate_network,
)
from cloud_engine.effectors.network.vxlan import device_name


def spec(**overrides: object) -> NetworkSpec:
    base: dict[str, object] = {
        "name": "net-a",
        "bridge": "cebr0",
        "cidr": "10.250.1.0/24",
        "gateway": "10.250.1.1",
    }
    base.update(overrides)
    return msgspec.convert(base, NetworkSpec)


VX = VxlanSpec(vni=4242, local_ip="10.251.0.1", underlay_dev="eth0", remote_ips=("10.251.0.2",))


def test_valid_specs_pass() -> None:
    validate_network(spec())
    validate_network(spec(isolation="vlan", vlan=100))
    validate_network(spec(isolation="vxlan", vxlan=VX, mtu=1450))
    validate_network(spec(cidr="10.250.1.0/30", gateway="10.250.1.2"))
    validate_network(spec(cidr="10.250.1.0/31", gateway="10.250.1.1", dhcp=False))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bridge": "a-bridge-name-too-long"}, "bridge"),
        ({"bridge": ""}, "bridge"),
        ({"bridge": "br 0"}, "bridge"),
        ({"bridge": "br/0"}, "bridge"),
        ({"name": ""}, "name"),
        ({"cidr": "10.250.1.1/24"}, "cidr"),  # host bits set
        ({"cidr": "not-a-cidr"}, "cidr"),
        ({"cidr": "fd00::/64", "gateway": "fd00::1"}, "cidr"),
        ({"cidr": "10.250.1.0/31", "gateway": "10.250.1.1"}, "cidr"),  # no room for DHCP
        ({"gateway": "10.250.2.1"}, "gateway"),
        ({"gateway": "10.250.1.0"}, "gateway"),
        ({"gateway": "10.250.1.255"}, "gateway"),
        ({"gateway": "nope"}, "gateway"),
        ({"mtu": 10}, "mtu"),
        ({"isolation": "vlan"}, "vlan"),
        ({"isolation": "vlan", "vlan": 0}, "vlan"),
        ({"isolation": "vlan", "vlan": 4095}, "vlan"),
        ({"vlan": 100}, "vlan"),
        ({"isolation": "vxlan"}, "vxlan"),
        ({"vxlan": VX}, "vxlan"),
        ({"isolation": "vxlan", "vxlan": msgspec.structs.replace(VX, vni=0)}, "vxlan.vni"),
        (
            {"isolation": "vxlan", "vxlan": msgspec.structs.replace(VX, vni=16_777_216)},
            "vxlan.vni",
        ),
        ({"isolation": "vxlan", "vxlan": msgspec.structs.replace(VX, port=0)}, "vxlan.port"),
        (
            {"isolation": "vxlan", "vxlan": msgspec.structs.replace(VX, local_ip="x")},
            "vxlan.local_ip",
        ),
        (
            {"isolation": "vxlan", "vxlan": msgspec.structs.replace(VX, underlay_dev="u" * 16)},
            "vxlan.underlay_dev",
        ),
        (
            {
                "isolation": "vxlan",
                "vxlan": msgspec.structs.replace(VX, remote_ips=("10.251.0.1",)),
            },
            "vxlan.remote_ips",
        ),
        (
            {"isolation": "vxlan", "vxlan": msgspec.structs.replace(VX, remote_ips=("a", "b"))},
            "vxlan.remote_ips",
        ),
    ],
)
def test_invalid_specs_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_network(spec(**overrides))
    assert err.value.field == field


def test_isolation_is_a_closed_set() -> None:
    with pytest.raises(msgspec.ValidationError):
        spec(isolation="gre")


@pytest.mark.parametrize(
    "host",
    [
        DhcpHost(mac="52:54:00:AA:bb:cc", ip="10.250.1.5"),
        DhcpHost(mac="52:54:00:aa:bb", ip="10.250.1.5"),
        DhcpHost(mac="52:54:00:aa:bb:cc", ip="10.250.1"),
        DhcpHost(mac="52:54:00:aa:bb:cc", ip="10.250.1.5", hostname="bad_name"),
    ],
)
def test_invalid_dhcp_hosts(host: DhcpHost) -> None:
    with pytest.raises(SpecError):
        validate_dhcp_host(host)


def test_isolated_network_xml() -> None:
    root = ET.fromstring(build_network_xml(spec(mtu=1450)))
    assert root.findtext("name") == "net-a"
    assert root.find("forward") is None  # isolated: nothing routed or NATed off the bridge
    bridge = root.find("bridge")
    assert bridge is not None
    assert bridge.attrib == {"name": "cebr0", "stp": "off", "delay": "0"}
    assert root.find("mtu") is not None
    assert root.find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    ip = root.find("ip")
    assert ip is not None
    assert ip.attrib == {"address": "10.250.1.1", "prefix": "24"}
    ranges = [(r.get("start"), r.get("end")) for r in ip.findall("dhcp/range")]
    assert ranges == [("10.250.1.2", "10.250.1.254")]
    assert root.find("vlan") is None


def test_dhcp_range_skips_a_gateway_in_the_middle() -> None:
    assert dhcp_ranges(spec(gateway="10.250.1.100")) == [
        ("10.250.1.1", "10.250.1.99"),
        ("10.250.1.101", "10.250.1.254"),
    ]
    assert dhcp_ranges(spec(gateway="10.250.1.254")) == [("10.250.1.1", "10.250.1.253")]


def test_no_dhcp_means_no_dhcp_element() -> None:
    root = ET.fromstring(build_network_xml(spec(dhcp=False)))
    assert root.find("ip/dhcp") is None


def test_vlan_tag_is_expressed() -> None:
    root = ET.fromstring(build_network_xml(spec(isolation="vlan", vlan=123)))
    tags = root.findall("vlan/tag")
    assert [t.get("id") for t in tags] == ["123"]
    assert parse_network_xml(build_network_xml(spec(isolation="vlan", vlan=123))).vlan == 123


def test_user_values_cannot_inject_markup() -> None:
    hostile = "x'/><forward mode='nat'/><name>y"
    root = ET.fromstring(build_network_xml(spec(name=hostile)))
    assert root.findtext("name") == hostile
    assert root.find("forward") is None
    host = ET.fromstring(dhcp_host_xml(DhcpHost(mac="m", ip="i", hostname="a'b\"<c>")))
    assert host.get("name") == "a'b\"<c>"


def test_round_trip_has_no_differences() -> None:
    for s in (spec(), spec(dhcp=False, mtu=9000), spec(isolation="vxlan", vxlan=VX)):
        parsed = parse_network_xml(build_network_xml(s))
        assert differences(s, parsed) == []
        assert parsed.bridge == s.bridge


def test_differences_are_reported() -> None:
    parsed = parse_network_xml(build_network_xml(spec()))
    diff = differences(spec(bridge="cebr1", cidr="10.250.1.0/25"), parsed)
    assert any(d.startswith("bridge:") for d in diff)
    assert any(d.startswith("prefix:") for d in diff)


def test_parse_reads_dhcp_hosts_and_libvirt_additions() -> None:
    # As libvirt hands it back: uuid, mac, netmask instead of prefix, upper-case MAC.
    xml = """<network><name>n</name><uuid>0b8b5f2e-0000-0000-0000-000000000000</uuid>
      <forward mode='nat'/><bridge name='virbr9' stp='off' delay='0'/>
      <mac address='52:54:00:00:00:01'/>
      <ip address='10.250.1.1' netmask='255.255.255.0'><dhcp>
        <range start='10.250.1.2' end='10.250.1.254'/>
        <host mac='52:54:00:AA:BB:CC' name='vm1' ip='10.250.1.10'/>
        <host mac='52:54:00:aa:bb:cd' ip='10.250.1.11'/>
      </dhcp></ip></network>"""
    parsed = parse_network_xml(xml)
    assert parsed.prefix == 24
    assert parsed.forward == "nat"
    assert parsed.dhcp_hosts == (
        DhcpHost(mac="52:54:00:aa:bb:cc", ip="10.250.1.10", hostname="vm1"),
        DhcpHost(mac="52:54:00:aa:bb:cd", ip="10.250.1.11"),
    )


def test_vxlan_device_name_fits_ifnamsiz() -> None:
    assert device_name(16_777_215) == "vx16777215"
    assert len(device_name(16_777_215)) <= 15
