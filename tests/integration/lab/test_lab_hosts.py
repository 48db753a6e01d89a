"""Lab hosts: separate libvirtds, an underlay only they share, names that
resolve, an idempotent up and a status that tells what runs."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest

from cloud_engine.lab import Lab, LabHost
from tests.integration.lab.lab_helpers import domain_name, domain_xml, names, reachable

pytestmark = pytest.mark.libvirt


def test_three_hosts_each_its_own_libvirtd(lab: Lab, hosts: list[LabHost]):
    assert [h.name for h in hosts] == ["h1", "h2", "h3"]
    assert len({h.uri for h in hosts}) == 3
    assert len({h.address for h in hosts}) == 3
    uuids = set()
    for host in hosts:
        conn = libvirt.open(host.uri)
        try:
            assert conn.getHostname() == host.name
            # Migration refuses hosts with one UUID; each host has its own.
            uuids.add(conn.getCapabilities().split("<uuid>")[1].split("</uuid>")[0])
        finally:
            conn.close()
    assert len(uuids) == 3
    assert len({h.local_pool_path for h in hosts}) == 3
    assert len({h.shared_pool_path for h in hosts}) == 1


def test_a_domain_defined_on_one_host_is_seen_there_only(hosts: list[LabHost]):
    name = domain_name()
    conn = libvirt.open(hosts[0].uri)
    try:
        conn.defineXML(domain_xml(name))
        assert name in names(hosts[0].uri)
        assert name not in names(hosts[1].uri)
        assert name not in names(hosts[2].uri)
        assert name not in names("qemu:///system")
    finally:
        conn.lookupByName(name).undefine()
        conn.close()


def test_status_tells_every_host_up_and_answering(lab: Lab, hosts: list[LabHost]):
    found = {s.host.name: s for s in lab.status()}
    assert set(found) == {"h1", "h2", "h3"}
    for host in hosts:
        status = found[host.name]
        assert (status.power, status.partitioned, status.answering) == ("on", False, True)
        assert status.host == host
        assert status.running_domains is not None


def test_up_again_finds_the_hosts_running(lab: Lab, hosts: list[LabHost]):
    started = time.monotonic()
    again = lab.up(3)
    assert time.monotonic() - started < 2.0
    assert again == hosts
    assert [h.pid for h in again] == [h.pid for h in hosts]


def test_hosts_reach_each_other_on_the_underlay_and_nothing_else(lab: Lab, hosts: list[LabHost]):
    assert reachable(lab, "h2", hosts[0].address)
    assert reachable(lab, "h1", hosts[2].address)
    routes = lab.run_in("h1", ["ip", "-4", "route"]).stdout
    assert "default" not in routes, routes
    assert not reachable(lab, "h1", "192.0.2.1", timeout_s=0.5)


def test_names_resolve_inside_a_host_without_dns(lab: Lab, hosts: list[LabHost]):
    started = time.monotonic()
    done = lab.run_in("h1", ["getent", "hosts", "h2"])
    assert done.stdout.split()[0] == hosts[1].address
    # A name no file knows fails at once (nothing answers on port 53).
    missing = lab.run_in("h1", ["getent", "hosts", "no-such-host.example"])
    assert missing.returncode != 0
    assert time.monotonic() - started < 2.0
    assert lab.run_in("h1", ["hostname"]).stdout.strip() == "h1"


def test_a_host_sees_its_own_local_pool_and_the_shared_one(lab: Lab, hosts: list[LabHost]):
    h1, h2 = hosts[0], hosts[1]
    marker = f"{domain_name()}.img"
    (Path(h1.shared_pool_path) / marker).write_text("shared")
    seen = lab.run_in("h2", ["ls", h2.shared_pool_path, h2.local_pool_path]).stdout
    assert marker in seen
    # Another host's local pool is not there at all inside h2.
    assert lab.run_in("h2", ["ls", h1.local_pool_path]).returncode != 0
    assert lab.run_in("h1", ["ls", h1.local_pool_path]).returncode == 0


def test_a_vxlan_between_two_hosts_rides_the_underlay(lab: Lab, hosts: list[LabHost]):
    h1, h2 = hosts[0], hosts[1]
    pairs = ((h1, h2, "10.242.0.1/24"), (h2, h1, "10.242.0.2/24"))
    try:
        for here, there, address in pairs:
            for argv in (
                # A 1500-byte inner MTU: the underlay carries 9000.
                f"ip link add vxlab mtu 1500 type vxlan id 4242 dev {here.underlay_device}"
                f" dstport 4789 remote {there.address}",
                f"ip address add {address} dev vxlab",
                "ip link set vxlab up",
            ):
                done = lab.run_in(here.name, argv.split())
                assert done.returncode == 0, done.stderr
        assert reachable(lab, "h1", "10.242.0.2")
        assert reachable(lab, "h2", "10.242.0.1")
    finally:
        for host in (h1, h2):
            lab.run_in(host.name, ["ip", "link", "del", "vxlab"])
