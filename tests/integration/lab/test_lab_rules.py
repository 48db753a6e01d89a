"""Egress, public IPs and network rules on the lab, through the engine.

The zone gets the lab's public network (its addresses are on-link from the
machine's root namespace: this process is "the internet's" client); a
VXLAN network created with it gets a virtual router on its network node.
A real guest (tiny-linux, serving its hostname and addresses on port 80)
is deployed on it; rules are recorded with the engine's commands and the
effector programs them. An "outside" server is a namespace of the test's
own on the lab's public bridge. The guest has no console here, so the
outbound direction (source NAT, static NAT's way out) is shown by a
namespace plugged into the network's bridge on the guest's host with an
address the engine allocated, as a VM's port would be. Deleting the
network at the end removes its router and table.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from cloud_engine.engine.commands.network import (
    AllocateIp,
    CreateNetwork,
    CreateNetworkRule,
    DestroyNetwork,
    ReleaseIp,
    RevokeNetworkRule,
    ShutdownNetwork,
)
from cloud_engine.engine.commands.network_tags import ReturnNetworkTag
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.network_rule import NetworkRule
from cloud_engine.lab import Lab, LabHost
from cloud_engine.lab.model import Layout
from tests.integration.effectors.effector_pipeline import wait_for
from tests.integration.effectors.test_router import FETCH, SERVER
from tests.integration.lab.lab_cloud import NAMES, Cloud

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert not check or done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def fetch(url: str, netns: str | None = None, timeout: float = 2.0) -> str:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return sh(*prefix, sys.executable, "-c", FETCH, url, str(timeout)).strip()


async def fetch_until(url: str, want: str, netns: str | None = None, wait_s: float = 90.0) -> str:
    """Fetch until the page has want (a guest still booting, a rule a
    moment from being programmed) or the wait is over. Fetches run in a
    thread: the engine, projections and effector are tasks of this event
    loop, and a loop blocked for the whole wait froze them (a rule the
    reconciler had just dropped on a lagging read model then never came
    back, which failed 2 of 3 CI runs)."""
    deadline = time.monotonic() + wait_s
    got = ""
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(fetch, url, netns)
        if want in got:
            break
        await asyncio.sleep(0.3)
    return got


class Outside:
    """Namespaces of the test's own: a server on the public network, and a
    VM's port on the routed network's bridge of one host."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.tag = uuid.uuid4().hex[:6]
        self.made: list[str] = []
        self.servers: list[subprocess.Popen[bytes]] = []

    def namespace(self, name: str) -> str:
        ns = f"cert-{name}-{self.tag}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.made.append(ns)
        return ns

    def plug(self, ns: str, into: str, bridge: str, address: str, via: str | None) -> None:
        port = f"ce{ns.split('-')[1][:3]}{self.tag}"
        sh("ip", "-n", into, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)  # fmt: skip
        sh("ip", "-n", into, "link", "set", port, "master", bridge, "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "mtu", "1400", "up")
        sh("ip", "-n", ns, "address", "add", address, "dev", "eth0")
        if via is not None:
            sh("ip", "-n", ns, "route", "add", "default", "via", via)

    def serve(self, ns: str, name: str) -> None:
        self.servers.append(
            subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, name, "80"])
        )

    def close(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def outside(lab: Lab) -> Iterator[Outside]:
    made = Outside(lab)
    try:
        yield made
    finally:
        made.close()


def routers_of(network_id: uuid.UUID) -> list[str]:
    suffix = f"-vr{network_id.hex[:10]}"
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines()
            if line.split()[0].endswith(suffix)]  # fmt: skip


def guest_facts(hosts: list[LabHost], cloud: Cloud, vm: uuid.UUID, router_ns: str) -> str:
    """What the lab knows of a guest that does not answer: its host's DHCP
    leases and the router's neighbours."""
    host = next(h for h in hosts if h.name == cloud.where(vm))
    leases = sh("nsenter", "-t", str(host.pid), "-m", "sh", "-c",
                "cat /var/lib/libvirt/dnsmasq/*.status", check=False)  # fmt: skip
    neighbours = sh("ip", "-n", router_ns, "neigh", check=False)
    return f"leases on {host.name}: {leases!r}; router neighbours: {neighbours!r}"


def path_facts(router_ns: str, table: str, address: str, server: str) -> str:
    """What the lab shows of a public address that does not answer: the
    root namespace's route and neighbour for it, the router's addresses,
    neighbours and table, and whether the outside server reaches it."""
    facts = {
        "root route": sh("ip", "route", "get", address, check=False),
        "root neighbour": sh("ip", "neigh", "show", address, check=False),
        "router addresses": sh("ip", "-n", router_ns, "-br", "address", check=False),
        "router routes": sh("ip", "-n", router_ns, "route", check=False),
        "router neighbours": sh("ip", "-n", router_ns, "neigh", check=False),
        "router table": sh(
            "ip", "netns", "exec", router_ns, "nft", "list", "table", "ip", table, check=False
        ),
        "from the outside server": fetch(f"http://{address}:8080/", server),
    }
    return "; ".join(f"{k}: {v.strip()!r}" for k, v in facts.items())


async def rule_state(cloud: Cloud, rule_id: uuid.UUID, state: str) -> NetworkRule:
    def reached() -> bool:
        rule = cloud.store.load(rule_id)
        assert isinstance(rule, NetworkRule)
        assert rule.state != "Error", rule.error
        return rule.state == state

    await wait_for(f"rule {rule_id} {state}", reached, cloud.pipeline)
    found = cloud.store.load(rule_id)
    assert isinstance(found, NetworkRule)
    return found


async def test_egress_public_ips_and_rules(
    guest_cloud: Cloud, lab: Lab, hosts: list[LabHost], outside: Outside
) -> None:
    cloud, run = guest_cloud, guest_cloud.service.execute
    fabric = cloud.fabric
    subnet, root_ip = lab.public_network()
    prefix = subnet.rsplit(".", 1)[0]
    public = run(
        CreateNetwork(account="ops", name="public", zone_id=fabric.zone, cidr=subnet,
                      gateway=root_ip, isolation="none", purpose="public")
    ).aggregate_id  # fmt: skip
    overlay = cloud.store.load(fabric.network)
    assert isinstance(overlay, Network)
    routed = run(
        CreateNetwork(account="acme", name="routed", zone_id=fabric.zone, cidr="10.61.0.0/24",
                      isolation="VXLAN", physical_network_id=overlay.physical_network_id,
                      public_network_id=public)
    ).aggregate_id  # fmt: skip
    network = cloud.store.load(routed)
    assert isinstance(network, Network) and network.router_address == "10.61.0.254"
    snat_ip = network.source_nat_ip
    try:
        vm = await cloud.deploy("web-r", network_ids=(routed,))
        vm_ip = cloud.addresses(vm)[0]
        await wait_for("the router", lambda: bool(routers_of(routed)), cloud.pipeline)
        # The guest boots (TCG) and answers on its network, seen from its router.
        router_ns = routers_of(routed)[0]
        booted = await fetch_until(f"http://{vm_ip}/", vm_ip, router_ns, wait_s=180)
        assert vm_ip in booted, f"{booted}; {guest_facts(hosts, cloud, vm, router_ns)}"

        # An outside server, and a VM's port on the network's bridge on the guest's host.
        server = outside.namespace("out")
        switch = Layout(lab.state_dir).switch_netns
        outside.plug(server, switch, "public", f"{prefix}.200/24", None)
        outside.serve(server, "outside")
        port_ip = run(AllocateIp(network_id=routed)).value
        stand_in = outside.namespace("vm")
        vm_host = next(h for h in hosts if h.name == cloud.where(vm))
        outside.plug(stand_in, vm_host.netns, NAMES.bridge(routed), f"{port_ip}/24",
                     network.router_address)  # fmt: skip
        outside.serve(stand_in, "stand-in")

        # Egress: through the router's source NAT address.
        egress = await fetch_until(f"http://{prefix}.200/", "outside", stand_in)
        assert egress == f"outside {snat_ip}"

        # A public IP of acme's, port forwarding 8080 -> the guest's 80.
        pub = run(AllocateIp(network_id=public, account="acme"))
        pub_ip = str(pub.value)
        forward = run(
            CreateNetworkRule(network_id=routed, kind="port_forwarding", protocol="tcp",
                              start_port=8080, public_ip_id=pub.aggregate_id, private_ip=vm_ip,
                              private_port=80)
        ).aggregate_id  # fmt: skip
        await rule_state(cloud, forward, "Active")
        page = await fetch_until(f"http://{pub_ip}:8080/", vm_ip)
        table = f"ce_vr_{routed.hex[:10]}"
        # The guest's own page: its address.
        assert vm_ip in page, f"{page}; {path_facts(router_ns, table, pub_ip, server)}"

        # A firewall rule admits one source CIDR: another's is refused, then the root's.
        elsewhere = run(
            CreateNetworkRule(network_id=routed, kind="firewall", protocol="tcp",
                              source_cidr=f"{prefix}.200/32", start_port=8080,
                              public_ip_id=pub.aggregate_id)
        ).aggregate_id  # fmt: skip
        await rule_state(cloud, elsewhere, "Active")
        assert fetch(f"http://{pub_ip}:8080/", timeout=1.0).startswith("FAILED")
        assert vm_ip in fetch(f"http://{pub_ip}:8080/", server)
        run(RevokeNetworkRule(rule_id=elsewhere))
        mine = run(
            CreateNetworkRule(network_id=routed, kind="firewall", protocol="tcp",
                              source_cidr=f"{root_ip}/32", start_port=8080,
                              public_ip_id=pub.aggregate_id)
        ).aggregate_id  # fmt: skip
        await rule_state(cloud, elsewhere, "Revoked")
        await rule_state(cloud, mine, "Active")
        assert vm_ip in fetch(f"http://{pub_ip}:8080/")
        assert fetch(f"http://{pub_ip}:8080/", server, 1.0).startswith("FAILED")

        # Deleted behind the engine's back: put back by the reconciler, reported.
        listing = sh("ip", "netns", "exec", router_ns, "nft", "-a", "list", "chain", "ip", table,
                     "vr_pre")  # fmt: skip
        handle = next(line.rsplit("# handle ", 1)[1] for line in listing.splitlines()
                      if f"rule:{forward}" in line)  # fmt: skip
        sh("ip", "netns", "exec", router_ns, "nft", "delete", "rule", "ip", table, "vr_pre",
           "handle", handle.strip())  # fmt: skip
        assert fetch(f"http://{pub_ip}:8080/", timeout=1.0).startswith("FAILED")

        def reported() -> bool:
            rule = cloud.store.load(forward)
            return getattr(rule, "last_drift", None) is not None

        await wait_for("the drift reported", reported, cloud.pipeline)
        assert vm_ip in await fetch_until(f"http://{pub_ip}:8080/", vm_ip, wait_s=10)

        # Revoked: the port is closed.
        run(RevokeNetworkRule(rule_id=forward))
        await rule_state(cloud, forward, "Revoked")
        assert fetch(f"http://{pub_ip}:8080/", timeout=1.0).startswith("FAILED")

        # Static NAT, both ways: the guest's page on every port of a public
        # IP, and the stand-in's own traffic leaving as its public IP.
        for private, name in ((vm_ip, vm_ip), (port_ip, "stand-in")):
            nat_ip = run(AllocateIp(network_id=public, account="acme"))
            nat = run(
                CreateNetworkRule(network_id=routed, kind="static_nat",
                                  public_ip_id=nat_ip.aggregate_id, private_ip=str(private))
            ).aggregate_id  # fmt: skip
            await rule_state(cloud, nat, "Active")
            assert name in await fetch_until(f"http://{nat_ip.value}/", str(name), wait_s=10)
        assert fetch(f"http://{prefix}.200/", stand_in) == f"outside {nat_ip.value}"

        # The network deleted (its VM expunged, its addresses and tag given
        # back): its router goes, with its table; nothing passes.
        for kind in ("vm.destroy", "vm.expunge"):
            status, error = await cloud.operate(kind, vm)
            assert status == "succeeded", error
        now = cloud.store.load(routed)
        assert isinstance(now, Network)
        run(ReleaseIp(ip_id=now.allocated[str(port_ip)]))
        run(ShutdownNetwork(network_id=routed))
        run(ReturnNetworkTag(network_id=routed))
        run(DestroyNetwork(network_id=routed))
        await wait_for("the router removed", lambda: not routers_of(routed), cloud.pipeline)
        assert not any(table in line for line in sh("nft", "list", "tables").splitlines())
        assert fetch(f"http://{nat_ip.value}/", timeout=1.0).startswith("FAILED")
    finally:
        for ns in routers_of(routed):
            sh("ip", "netns", "del", ns, check=False)
