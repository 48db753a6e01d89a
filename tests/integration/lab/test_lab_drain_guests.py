"""A host's maintenance with real guests (tiny-linux under TCG): the four
running VMs of a host end on the other hosts, each running exactly once
(every libvirtd checked), and none of their guests was rebooted: each
guest's kernel boot id, read on its serial console before and after the
drain, is the same, and its uptime has grown. (test_lab_drain.py drains
firmware-only guests, which cannot tell a live migration from a restart.)

A restart anywhere on the way (a cold move: stop, start elsewhere) boots a
new kernel, which draws a new random boot id and counts its uptime from
zero, so either assertion catches it."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass

import pytest

from cloud_engine.effectors.compute.console import ConsoleError, SerialConsole
from cloud_engine.lab import LabHost
from tests.integration.lab.lab_cloud import Cloud, finish
from tests.integration.lab.test_lab_drain import (
    consistent,
    drain,
    four_on,
    host,
    migrations_of,
    start_drainer,
)
from tests.integration.lab.test_lab_guests import BOOT_S, shell

# Four guests booting under TCG on a shared machine: above the default 240 s.
pytestmark = [pytest.mark.postgres, pytest.mark.libvirt, pytest.mark.timeout(600)]

BOOT_ID = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\r?$", re.M)
UPTIME = re.compile(r"^(\d+\.\d+) \d+\.\d+\r?$", re.M)


@dataclass(frozen=True)
class Boot:
    boot_id: str
    uptime_s: float


def read_boot(lab_host: LabHost, vm_id: uuid.UUID) -> Boot:
    """The guest's boot id and uptime, typed for at its root shell on the
    serial console. The shell is there once the guest has booted: until
    then, type again."""
    deadline = time.monotonic() + BOOT_S
    while True:
        try:
            with SerialConsole(lab_host.uri, vm_id) as console:
                status, seen = shell(
                    console, "cat /proc/sys/kernel/random/boot_id /proc/uptime", timeout_s=15.0
                )
            boot_id, uptime = BOOT_ID.search(seen), UPTIME.search(seen)
            if status == 0 and boot_id and uptime:
                return Boot(boot_id.group(1), float(uptime.group(1)))
        except (AssertionError, ConsoleError):
            pass  # still booting
        assert time.monotonic() < deadline, f"no shell on {vm_id}'s console on {lab_host.name}"


async def test_a_drain_moves_four_booted_guests_without_rebooting_them(
    guest_cloud: Cloud, hosts: list[LabHost]
):
    cloud = guest_cloud
    start_drainer(cloud)
    h1 = cloud.fabric.host_of(hosts[0])
    vms = await four_on(cloud, h1)
    assert {cloud.where(v) for v in vms} == {"h1"}
    before = {vm_id: await asyncio.to_thread(read_boot, hosts[0], vm_id) for vm_id in vms}

    op = await finish(cloud.pipeline, cloud.store, await drain(cloud, h1))
    assert op.status == "succeeded", op.error
    assert host(cloud, h1).state == "Maintenance" and not host(cloud, h1).reservations

    by_name = {lab_host.name: lab_host for lab_host in hosts}
    for vm_id in vms:
        now_on = consistent(cloud, hosts, vm_id)  # running once, where its record says
        assert now_on != "h1"
        assert migrations_of(cloud, vm_id) == 1
        after = await asyncio.to_thread(read_boot, by_name[now_on], vm_id)
        # The same kernel, still counting: not rebooted on the way.
        assert after.boot_id == before[vm_id].boot_id, (vm_id, before[vm_id], after)
        assert after.uptime_s > before[vm_id].uptime_s, (vm_id, before[vm_id], after)
