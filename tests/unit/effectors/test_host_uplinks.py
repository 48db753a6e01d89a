"""What an effector takes from a host's registration for networks that span
hosts: its uplink (underlay device and address, the zone's other hosts as
VXLAN peers), one gateway MAC per network on every host, a DHCP that
ignores clients it was not told of, and where the host's commands run."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

from cloud_engine.effectors.desired import HostView, NetworkView
from cloud_engine.effectors.host_netns import local_socket
from cloud_engine.effectors.mapping import Uplink, gateway_mac, host_uplink, network_spec
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.network.network_xml import (
    DNSMASQ_NS,
    build_network_xml,
    ignores_unknown,
)
from cloud_engine.effectors.network.vxlan import _argv

ZONE = uuid.uuid4()


def host(n: int, address: str | None = None, device: str | None = "lab0") -> HostView:
    return HostView(
        id=uuid.UUID(int=n),
        version=1,
        name=f"h{n}",
        zone_id=ZONE,
        state="Enabled",
        libvirt_uri=f"qemu+unix:///system?socket=/lab/hosts/h{n}/run/libvirt-sock",
        underlay_address=address,
        underlay_device=None if address is None else device,
    )


def network() -> NetworkView:
    return NetworkView(
        id=uuid.uuid4(),
        version=2,
        cidr="10.1.0.0/24",
        gateway="10.1.0.1",
        isolation="VXLAN",
        tag=5001,
        state="Implemented",
    )


def test_a_registered_underlay_is_the_hosts_uplink_with_the_zones_peers() -> None:
    hosts = [host(1, "169.254.0.11"), host(2, "169.254.0.12"), host(3), host(4, "169.254.0.14")]
    uplink = host_uplink(hosts[0], hosts)
    assert uplink == Uplink(
        device="lab0", local_ip="169.254.0.11", peers=("169.254.0.12", "169.254.0.14")
    )
    spec = network_spec(Names(), network(), uplink)
    assert spec.vxlan is not None and spec.vxlan.remote_ips == ("169.254.0.12", "169.254.0.14")


def test_a_host_without_an_underlay_takes_the_effectors_own() -> None:
    own = Uplink(device="eth1", local_ip="192.0.2.1")
    assert host_uplink(host(3), [host(1, "169.254.0.11")], own) is own
    assert host_uplink(host(3), [host(1, "169.254.0.11")]) is None


def test_one_gateway_mac_per_network_never_a_nics() -> None:
    net = network()
    mac = gateway_mac(net)
    assert mac == gateway_mac(net) and mac != gateway_mac(network())
    assert mac.startswith("06:ce:")  # NICs' are 02:...


def test_the_network_xml_fixes_the_bridge_mac_and_ignores_unknown_clients() -> None:
    net = network()
    spec = network_spec(Names(), net)
    xml = build_network_xml(spec)
    root = ET.fromstring(xml)
    mac = root.find("mac")
    assert mac is not None and mac.get("address") == gateway_mac(net)
    option = root.find(f"{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option")
    assert option is not None and option.get("value") == "dhcp-ignore=tag:!known"
    assert ignores_unknown(xml)
    assert root.find("ip/dhcp/range") is not None  # still leases known MACs from the range


def test_commands_run_in_the_namespace_of_a_daemon_reached_by_its_socket() -> None:
    assert local_socket(host(1).libvirt_uri) == "/lab/hosts/h1/run/libvirt-sock"
    for uri in ("qemu:///system", "qemu+ssh://h1/system", "qemu+tls://h1/system", "test:///x"):
        assert local_socket(uri) is None
    assert _argv(["ip", "link"], "/proc/7/ns/net") == [
        "nsenter", "--net=/proc/7/ns/net", "--", "ip", "link",
    ]  # fmt: skip
    assert _argv(["ip", "link"], "lab-h1") == ["ip", "netns", "exec", "lab-h1", "ip", "link"]
