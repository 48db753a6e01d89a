"""`cloud-engine effector` SIGKILLed during a live migration between lab
hosts, then started again: the VM runs on exactly one host and the record
(host, state, capacity) says which, whether the kill came while the guest
was still streaming to the destination or after it arrived there."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import libvirt
import pytest

from cloud_engine.effectors.executor import FAULT_ENV
from cloud_engine.engine.commands.operations import VmOperation
from cloud_engine.lab import LabHost
from tests.integration.lab.lab_cloud import (
    NAMES,
    Cloud,
    EffectorProcess,
    dhcp_known,
    domain_states,
    finish,
    lab_cloud,
    nic_mac,
    reserved_on,
    running_on,
)

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]


def wait_until(what: str, probe, timeout_s: float = 60.0, every_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


async def migrate_and_kill(
    cloud: Cloud,
    hosts: list[LabHost],
    effector: EffectorProcess,
    vm_id: uuid.UUID,
    target: LabHost,
    kill_when,
) -> uuid.UUID:
    """Ask for the migration and SIGKILL the effector once kill_when holds
    for the domain's states on the hosts; the operation's id."""
    migrate = VmOperation(kind="vm.migrate", vm_id=vm_id, host_id=cloud.fabric.host_of(target))
    op = await cloud.service.execute_async(migrate)
    await asyncio.to_thread(
        wait_until, "the moment to kill", lambda: kill_when(domain_states(hosts, vm_id))
    )
    effector.kill()
    assert cloud.vm(vm_id).state == "Migrating"  # nobody has answered the engine
    return op.aggregate_id


async def test_an_effector_killed_mid_migration_leaves_one_vm_where_the_record_says(
    pg_target, service, store, broker, topic_prefix, hosts: list[LabHost], tmp_path: Path
):
    h1, h2, h3 = hosts
    log = tmp_path / "effector.log"
    async with lab_cloud(
        pg_target, service, store, broker, topic_prefix, hosts, tmp_path, effector=False
    ) as cloud:
        effector = EffectorProcess(pg_target, broker, topic_prefix, log)
        try:
            await cloud.template_ready()
            vm_id = await cloud.deploy("app", host_id=cloud.fabric.host_of(h1))
            assert running_on(hosts, vm_id) == ["h1"]

            # While the guest streams: the destination has its incoming
            # (paused) domain, the source still runs it.
            def streaming(states: dict[str, int]) -> bool:
                running, paused = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED
                return states == {"h1": running, "h2": paused}

            op_id = await migrate_and_kill(cloud, hosts, effector, vm_id, h2, streaming)
            # libvirt undid it or finished it; either way one QEMU runs.
            effector = EffectorProcess(pg_target, broker, topic_prefix, log)
            op = await finish(cloud.pipeline, cloud.store, op_id)
            assert op.status == "succeeded", op.error
            assert (cloud.vm(vm_id).state, cloud.where(vm_id)) == ("Running", "h2")
            assert running_on(hosts, vm_id) == ["h2"]
            assert domain_states(hosts, vm_id).keys() == {"h2"}
            assert reserved_on(cloud.store, cloud.fabric, vm_id) == ["h2"]
            effector.stop()

            # After the guest arrived, before the effector reported (and
            # told h3's DHCP): the record still says h2, the guest runs on h3.
            slow = {FAULT_ENV: "after-migrate:120"}
            effector = EffectorProcess(pg_target, broker, topic_prefix, log, env=slow)

            def arrived(states: dict[str, int]) -> bool:
                return states == {"h3": libvirt.VIR_DOMAIN_RUNNING}

            op_id = await migrate_and_kill(cloud, hosts, effector, vm_id, h3, arrived)
            network = NAMES.network(cloud.fabric.network)
            mac = nic_mac(h3, vm_id)
            # The source's DHCP forgot it while it moved; the destination's
            # has not learned it yet.
            assert mac not in dhcp_known(h2, network) and mac not in dhcp_known(h3, network)
            effector = EffectorProcess(pg_target, broker, topic_prefix, log)
            op = await finish(cloud.pipeline, cloud.store, op_id)
            assert op.status == "succeeded", op.error
            assert (cloud.vm(vm_id).state, cloud.where(vm_id)) == ("Running", "h3")
            assert running_on(hosts, vm_id) == ["h3"]
            assert reserved_on(cloud.store, cloud.fabric, vm_id) == ["h3"]
            # The redelivered work finished what was left: DHCP moved.
            assert mac in dhcp_known(h3, network) and mac not in dhcp_known(h2, network)
        finally:
            effector.stop()
