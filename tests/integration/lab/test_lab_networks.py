"""A VXLAN network that spans lab hosts: two VMs of one network on two hosts
are on one L2 segment (their bridges, each with the VM's port and a VXLAN
port on the host's underlay, carry traffic between probes plugged into
them), and only one DHCP server answers any VM: the one on the VM's host,
also after the VM moved, and none once it stopped.

Guests have no OS yet, so probes stand in for them: a veth whose one end
is a port of the host's bridge and whose other end is in a namespace of
the test's own, with an address of the network (UDP) or none (DHCP)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cloud_engine.lab import Lab, LabHost
from tests.integration.lab.lab_cloud import (
    NAMES,
    Cloud,
    dhcp_known,
    domain_states,
    nic_mac,
    running_on,
)

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

PROBE = str(Path(__file__).with_name("probe_main.py"))


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


class Probe:
    """A veth from the host's bridge into a namespace of the test's own."""

    def __init__(self, lab_host: LabHost, bridge: str, address: str | None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.netns = f"ceprobe-{tag}"
        self.device = f"pq{tag}"
        outer = f"pv{tag}"
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", lab_host.netns, "link", "add", outer, "type", "veth",
           "peer", "name", self.device)  # fmt: skip
        sh("ip", "-n", lab_host.netns, "link", "set", self.device, "netns", self.netns)
        sh("ip", "-n", lab_host.netns, "link", "set", outer, "master", bridge, "up")
        sh("ip", "-n", self.netns, "link", "set", self.device, "up")
        if address is not None:
            sh("ip", "-n", self.netns, "addr", "add", f"{address}/24", "dev", self.device)

    def run(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, PROBE, *args],
            stdout=subprocess.PIPE,
            text=True,
        )

    def dhcp(self, mac: str) -> list[str]:
        """The addresses offered to a DISCOVER for mac, one per server."""
        out, _ = self.run("dhcp", mac, "3", self.device).communicate(timeout=30)
        return [] if out.strip() == "none" else out.split()

    def close(self) -> None:
        # Its veth goes with it (the host's end too).
        subprocess.run(["ip", "netns", "del", self.netns], check=False)


@contextmanager
def probes(*wanted: tuple[LabHost, str, str | None]) -> Iterator[list[Probe]]:
    made: list[Probe] = []
    try:
        for lab_host, bridge, address in wanted:
            made.append(Probe(lab_host, bridge, address))
        yield made
    finally:
        for probe in made:
            probe.close()


def bridge_ports(lab_host: LabHost, bridge: str) -> dict[str, str]:
    """Port name -> kind (vxlan, tun for a VM's tap, veth) of a host's bridge."""
    out = sh("ip", "-n", lab_host.netns, "-j", "-d", "link", "show", "master", bridge)
    return {
        link["ifname"]: link.get("linkinfo", {}).get("info_kind", "") for link in json.loads(out)
    }


async def test_a_vxlan_network_spans_hosts_with_one_dhcp_answer(
    cloud: Cloud, lab: Lab, hosts: list[LabHost]
):
    h1, h2, h3 = hosts
    a = await cloud.deploy("a", host_id=cloud.fabric.host_of(h1))
    b = await cloud.deploy("b", host_id=cloud.fabric.host_of(h2))
    assert (running_on(hosts, a), running_on(hosts, b)) == (["h1"], ["h2"])
    network = NAMES.network(cloud.fabric.network)
    bridge = NAMES.bridge(cloud.fabric.network)
    mac_a, mac_b = nic_mac(h1, a), nic_mac(h2, b)
    address_a = dhcp_known(h1, network)[mac_a]
    address_b = dhcp_known(h2, network)[mac_b]

    # Each host's bridge has its VM's port and a VXLAN port on the underlay.
    for lab_host in (h1, h2):
        kinds = sorted(bridge_ports(lab_host, bridge).values())
        assert kinds == ["tun", "vxlan"], kinds
    # Each host's DHCP knows its own VM only.
    assert dhcp_known(h1, network) == {mac_a: address_a}
    assert dhcp_known(h2, network) == {mac_b: address_b}

    with probes((h1, bridge, "10.60.0.250"), (h2, bridge, "10.60.0.251")) as (p1, p2):
        # One L2 segment: a datagram from h1's bridge reaches h2's and back.
        listener = p2.run("listen", "7777", "10")
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        sent, _ = p1.run("send", "10.60.0.251", "7777").communicate(timeout=30)
        assert sent.strip() == "pong:ping"
        heard, _ = listener.communicate(timeout=30)
        assert heard.strip() == "got ping from 10.60.0.250"

        # A DISCOVER for a's MAC sent on h2 crosses to h1: one offer, a's
        # address; another MAC gets none from any host.
        assert p2.dhcp(mac_a) == [address_a]
        assert p1.dhcp(mac_b) == [address_b]
        assert p2.dhcp("02:00:5e:00:00:99") == []

    # a moves to h3: h3's DHCP knows it, h1's forgot it.
    migrate = {"host_id": cloud.fabric.host_of(h3)}
    assert await cloud.operate("vm.migrate", a, **migrate) == ("succeeded", "")
    assert running_on(hosts, a) == ["h3"]
    assert domain_states(hosts, a).keys() == {"h3"}
    assert dhcp_known(h1, network) == {}
    assert dhcp_known(h3, network) == {mac_a: address_a}
    assert sorted(bridge_ports(h3, bridge).values()) == ["tun", "vxlan"]

    # b stops: h2's DHCP forgets it.
    assert await cloud.operate("vm.stop", b) == ("succeeded", "")
    assert dhcp_known(h2, network) == {}

    with probes((h1, bridge, None), (h2, bridge, None)) as (p1, p2):
        assert p2.dhcp(mac_a) == [address_a]  # from h3 now, and only from h3
        assert p1.dhcp(mac_b) == []
