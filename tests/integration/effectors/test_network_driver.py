"""The network driver against the real libvirtd, and VXLAN for real between
network namespaces.

libvirt networks are named with the test's name_prefix (the conftest removes
them even on failure); every Linux device and namespace created here is
removed by the fixtures below, also on failure.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import libvirt
import msgspec
import pytest

from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.network import vxlan
from cloud_engine.effectors.network.driver import (
    DhcpConflict,
    NetworkConflict,
    NetworkDriver,
    VlanUnsupported,
)
from cloud_engine.effectors.network.spec import DhcpHost, NetworkSpec, VxlanSpec

pytestmark = pytest.mark.libvirt


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr}")
    return proc


def link(dev: str, netns: str | None = None) -> dict[str, object] | None:
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "-d", "link", "show", "dev", dev]
    proc = sh(*argv, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


@pytest.fixture
def hexid() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def root_links() -> Iterator[list[str]]:
    """Names of root-namespace devices to delete after the test."""
    names: list[str] = []
    yield names
    for name in names:
        sh("ip", "link", "del", "dev", name, check=False)


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    created: list[str] = []

    def make(name: str) -> str:
        sh("ip", "netns", "add", name)
        created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in created:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def driver(hypervisor: Hypervisor) -> NetworkDriver:
    return NetworkDriver(hypervisor)


def plain_spec(name_prefix: str, hexid: str, **kw: object) -> NetworkSpec:
    base: dict[str, object] = {
        "name": f"{name_prefix}net",
        "bridge": f"cebr{hexid}",
        "cidr": "10.250.7.0/24",
        "gateway": "10.250.7.1",
    }
    base.update(kw)
    return msgspec.convert(base, NetworkSpec)


def dhcp_entries(hv: Hypervisor, name: str, flags: int) -> list[dict[str, str]]:
    xml = hv.call("xml", lambda c: c.networkLookupByName(name).XMLDesc(flags))
    return [dict(h.attrib) for h in ET.fromstring(xml).findall("ip/dhcp/host")]


def test_ensure_is_idempotent(
    driver: NetworkDriver, hypervisor: Hypervisor, name_prefix: str, hexid: str
) -> None:
    spec = plain_spec(name_prefix, hexid, mtu=1400)
    outcomes = [driver.ensure(spec) for _ in range(3)]
    assert [o.changed for o in outcomes] == [True, False, False]
    assert outcomes[1].state == outcomes[2].state == outcomes[0].state
    state = outcomes[0].state
    assert (state.exists, state.active, state.bridge) == (True, True, spec.bridge)

    names = hypervisor.call("list", lambda c: [n.name() for n in c.listAllNetworks()])
    assert [n for n in names if n.startswith(name_prefix)] == [spec.name]
    assert hypervisor.call("autostart", lambda c: c.networkLookupByName(spec.name).autostart())
    bridge = json.loads(sh("ip", "-j", "-d", "link", "show", spec.bridge).stdout)[0]
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert bridge["mtu"] == 1400

    # Something outside the driver stopped it: ensure restarts it.
    hypervisor.call("stop", lambda c: c.networkLookupByName(spec.name).destroy())
    assert driver.observe(spec.name).active is False
    again = driver.ensure(spec)
    assert again.changed is True
    assert again.state == state

    with pytest.raises(NetworkConflict, match="prefix"):
        driver.ensure(msgspec.structs.replace(spec, cidr="10.250.7.0/25"))


def test_dhcp_hosts(
    driver: NetworkDriver, hypervisor: Hypervisor, name_prefix: str, hexid: str
) -> None:
    spec = plain_spec(name_prefix, hexid)
    driver.ensure(spec)
    host = DhcpHost(mac="52:54:00:AB:CD:01", ip="10.250.7.10", hostname="vm1")

    first = driver.add_dhcp_host(spec.name, host)
    second = driver.add_dhcp_host(spec.name, host)
    assert (first.changed, second.changed) == (True, False)
    wanted = {"mac": "52:54:00:ab:cd:01", "ip": "10.250.7.10", "name": "vm1"}
    for flags in (0, libvirt.VIR_NETWORK_XML_INACTIVE):  # live and persistent
        assert dhcp_entries(hypervisor, spec.name, flags) == [wanted]
    assert second.state.dhcp_hosts == (
        DhcpHost(mac="52:54:00:ab:cd:01", ip="10.250.7.10", hostname="vm1"),
    )

    moved = driver.add_dhcp_host(spec.name, msgspec.structs.replace(host, ip="10.250.7.11"))
    assert moved.changed is True
    assert [h.ip for h in moved.state.dhcp_hosts] == ["10.250.7.11"]
    for flags in (0, libvirt.VIR_NETWORK_XML_INACTIVE):
        assert [h["ip"] for h in dhcp_entries(hypervisor, spec.name, flags)] == ["10.250.7.11"]

    with pytest.raises(DhcpConflict):
        driver.add_dhcp_host(spec.name, DhcpHost(mac="52:54:00:ab:cd:02", ip="10.250.7.11"))

    gone = driver.remove_dhcp_host(spec.name, "52:54:00:AB:CD:01")
    assert gone.changed is True
    assert gone.state.dhcp_hosts == ()
    assert driver.remove_dhcp_host(spec.name, "52:54:00:ab:cd:01").changed is False
    for flags in (0, libvirt.VIR_NETWORK_XML_INACTIVE):
        assert dhcp_entries(hypervisor, spec.name, flags) == []


def test_remove(driver: NetworkDriver, name_prefix: str, hexid: str) -> None:
    spec = plain_spec(name_prefix, hexid)
    driver.ensure(spec)
    removed = driver.remove(spec.name)
    assert removed.changed is True
    assert (removed.state.exists, removed.state.active) == (False, False)
    assert link(spec.bridge) is None
    again = driver.remove(spec)
    assert again.changed is False
    assert again.state == removed.state


def test_vlan_is_refused_by_libvirt_on_a_linux_bridge(
    driver: NetworkDriver, name_prefix: str, hexid: str
) -> None:
    spec = plain_spec(name_prefix, hexid, isolation="vlan", vlan=42)
    with pytest.raises(VlanUnsupported, match="vlan"):
        driver.ensure(spec)
    assert driver.observe(spec.name).exists is False


def test_vxlan_network_on_the_host(
    driver: NetworkDriver, name_prefix: str, hexid: str, root_links: list[str]
) -> None:
    # No dummy module on these kernels: a veth pair stands in for the uplink.
    underlay, peer = f"ceu{hexid}", f"cev{hexid}"
    root_links.append(underlay)
    sh("ip", "link", "add", underlay, "type", "veth", "peer", "name", peer)
    sh("ip", "addr", "add", "10.250.8.1/24", "dev", underlay)
    sh("ip", "link", "set", underlay, "up")
    vni = random.randint(10_000_000, 16_000_000)
    dev = vxlan.device_name(vni)
    root_links.append(dev)
    vx = VxlanSpec(
        vni=vni, local_ip="10.250.8.1", underlay_dev=underlay, remote_ips=("10.250.8.2",)
    )
    spec = plain_spec(name_prefix, hexid, isolation="vxlan", vxlan=vx, mtu=1450)

    first, second = driver.ensure(spec), driver.ensure(spec)
    assert (first.changed, second.changed) == (True, False)
    assert second.state.vxlan_attached is True
    info = link(dev)
    assert info is not None
    assert info["master"] == spec.bridge
    assert "UP" in info["flags"]  # type: ignore[operator]
    data = info["linkinfo"]["info_data"]  # type: ignore[index]
    assert (data["id"], data["local"], data["link"], data["port"]) == (
        vni, "10.250.8.1", underlay, 4789,
    )  # fmt: skip
    assert vxlan.remote_vteps(dev) == {"10.250.8.2"}

    more = msgspec.structs.replace(vx, remote_ips=("10.250.8.3", "10.250.8.4"))
    assert driver.ensure(msgspec.structs.replace(spec, vxlan=more)).changed is True
    assert vxlan.remote_vteps(dev) == {"10.250.8.3", "10.250.8.4"}

    # A device of that name with another VNI is someone else's: refuse it.
    with pytest.raises(vxlan.VxlanConflict, match="id"):
        vxlan.ensure_vxlan(dev, msgspec.structs.replace(vx, vni=vni + 1), spec.bridge)

    removed = driver.remove(spec.name)  # by name: the port is found on the bridge
    assert removed.changed is True
    assert link(dev) is None
    assert link(spec.bridge) is None
    assert driver.remove(spec).changed is False


def overlay_host(ns: str, underlay_ip: str, vx: VxlanSpec, overlay_ip: str) -> None:
    sh("ip", "-n", ns, "addr", "add", f"{underlay_ip}/24", "dev", "ul")
    sh("ip", "-n", ns, "link", "set", "ul", "up")
    sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ns, "link", "set", "br0", "up")
    assert vxlan.ensure_vxlan("vx0", vx, "br0", netns=ns) is True
    assert vxlan.ensure_vxlan("vx0", vx, "br0", netns=ns) is False
    sh("ip", "-n", ns, "addr", "add", f"{overlay_ip}/24", "dev", "br0")


# ping is not installed everywhere; a TCP connect to a closed port is just as
# telling: a refusal (RST) came back from the target, a timeout or "no route"
# (ARP unanswered) means nothing did.
PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=1).close()
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
"""


def reaches(ns: str, target: str, attempts: int = 3) -> bool:
    argv = ("ip", "netns", "exec", ns, sys.executable, "-c", PROBE, target)
    return any(sh(*argv, check=False).returncode == 0 for _ in range(attempts))


def test_vxlan_overlay_between_namespaces(netns: Callable[[str], str], hexid: str) -> None:
    # An underlay "switch" namespace with a bridge; three "hosts" hang off it
    # by veth. a and b share a VNI, c uses another one but sends to them.
    switch = netns(f"ce-s-{hexid}")
    hosts = {k: netns(f"ce-{k}-{hexid}") for k in "abc"}
    sh("ip", "-n", switch, "link", "add", "sw", "type", "bridge")
    sh("ip", "-n", switch, "link", "set", "sw", "up")
    for k, ns in hosts.items():
        sh("ip", "-n", switch, "link", "add", f"p{k}", "type", "veth", "peer", "name", "ul",
           "netns", ns)  # fmt: skip
        sh("ip", "-n", switch, "link", "set", f"p{k}", "master", "sw", "up")
    underlay = {"a": "10.251.0.1", "b": "10.251.0.2", "c": "10.251.0.3"}
    overlay = {"a": "10.252.0.1", "b": "10.252.0.2", "c": "10.252.0.3"}
    vni = {"a": 5001, "b": 5001, "c": 5002}
    for k, ns in hosts.items():
        remotes = tuple(ip for other, ip in underlay.items() if other != k)
        vx = VxlanSpec(vni=vni[k], local_ip=underlay[k], underlay_dev="ul", remote_ips=remotes)
        overlay_host(ns, underlay[k], vx, overlay[k])

    assert reaches(hosts["a"], overlay["b"])
    assert reaches(hosts["b"], overlay["a"])
    # c reaches b's VTEP on the underlay, but the VNI keeps it off b's segment.
    assert reaches(hosts["c"], underlay["b"])
    assert not reaches(hosts["c"], overlay["b"], attempts=2)
    assert not reaches(hosts["a"], overlay["c"], attempts=1)

    assert vxlan.remove_vxlan("vx0", netns=hosts["a"]) is True
    assert vxlan.remove_vxlan("vx0", netns=hosts["a"]) is False
    assert not reaches(hosts["b"], overlay["a"], attempts=1)
