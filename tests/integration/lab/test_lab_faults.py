"""Failing a host on purpose: a power cut, and a partition."""

from __future__ import annotations

import contextlib

import libvirt
import pytest

from cloud_engine.lab import Lab, LabHost
from cloud_engine.lab.system import list_netns, pids_in_netns
from tests.integration.lab.lab_helpers import (
    domain_name,
    domain_xml,
    names,
    qemu_pids,
    reachable,
)

pytestmark = pytest.mark.libvirt


def test_power_off_kills_everything_in_the_host_and_power_on_brings_it_back_empty(
    lab: Lab, hosts: list[LabHost]
):
    h3 = hosts[2]
    name = domain_name()
    conn = libvirt.open(h3.uri)
    conn.defineXML(domain_xml(name)).create()
    conn.close()
    [qemu] = qemu_pids(name)
    daemons = pids_in_netns(h3.netns)
    assert len(daemons) >= 5  # supervisor, pid 1, virtlogd, virtlockd, libvirtd, QEMU

    lab.power_off("h3")

    assert qemu_pids(name) == []
    assert not any(_exists(pid) for pid in [qemu, *daemons])
    assert h3.netns not in list_netns()
    status = {s.host.name: s for s in lab.status()}
    assert (status["h3"].power, status["h3"].answering) == ("off", False)
    assert (status["h1"].power, status["h1"].answering) == ("on", True)
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(h3.uri)
    assert not reachable(lab, "h1", h3.address, timeout_s=1.0)

    back = lab.power_on("h3")

    assert names(back.uri) == set()
    assert back.address == h3.address
    assert back.pid != h3.pid
    assert reachable(lab, "h1", back.address)


def test_partition_cuts_a_running_host_off_and_heal_restores_it(lab: Lab, hosts: list[LabHost]):
    h1 = hosts[0]
    assert reachable(lab, "h2", h1.address)
    held = libvirt.open(h1.uri)
    try:
        lab.partition("h1")
        try:
            assert not reachable(lab, "h2", h1.address, timeout_s=1.0)
            assert not reachable(lab, "h1", hosts[1].address, timeout_s=1.0)
            with pytest.raises(libvirt.libvirtError):
                libvirt.open(h1.uri)
            # A connection made before is dropped, as a cut link would.
            with pytest.raises(libvirt.libvirtError):
                held.listAllDomains()
            status = {s.host.name: s for s in lab.status()}["h1"]
            assert (status.power, status.partitioned) == ("on", True)
            assert _exists(h1.pid)
        finally:
            lab.heal("h1")
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            held.close()
    assert reachable(lab, "h2", h1.address)
    assert names(h1.uri) is not None
    assert lab.up(3)[0].pid == h1.pid


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
