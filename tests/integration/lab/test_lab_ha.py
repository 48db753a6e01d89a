"""HA, fencing, the lock manager and convergence on a real 3-host lab: the
engine, an effector and automation in this process, a lab host's power cut
as the failure, the lab's power cut as the fence."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import signal
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest

from cloud_engine.automation.heartbeat import HEARTBEAT_DIR
from cloud_engine.automation.service import Automation
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.engine.commands.hosts import UpdateHostOvercommit
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.host_ha import restart_id, run_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.lab import Lab, LabHost
from cloud_engine.runner.lab_fencer import LabFencer
from tests.integration.cli_process import ASYNCIO, CliProcess, cli_env
from tests.integration.effectors.effector_pipeline import wait_for
from tests.integration.lab.lab_cloud import NAMES, Cloud, lab_cloud, running_on

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]


def _start_effector(cloud: Cloud, pg_target, broker: str, prefix: str) -> None:
    # Checks every 3 s, a failing host every 0.5 s; Suspect after 2 misses.
    effector = EffectorService(
        pg_target,
        effector_config(broker, prefix),
        names=NAMES,
        name="effector@lab-ha",
        stop_timeout_s=5.0,
        reconcile_interval_s=3.0,
    )
    cloud.pipeline.tasks.append(asyncio.create_task(effector.run(cloud.pipeline.stop)))


@pytest.fixture
async def ha_cloud(
    pg_target, service, store, broker, topic_prefix, lab: Lab, hosts: list[LabHost], tmp_path: Path
) -> AsyncIterator[tuple[Cloud, Automation]]:
    async with lab_cloud(
        pg_target, service, store, broker, topic_prefix, hosts, tmp_path, effector=False
    ) as cloud:
        _start_effector(cloud, pg_target, broker, topic_prefix)
        automation = Automation(
            service,
            store,
            pg_target,
            broker,
            topic_prefix,
            LabFencer(lab),
            check_s=0.5,
            heartbeat_timeout_s=4.0,
            up_after_s=3.0,
        )
        cloud.pipeline.tasks.append(asyncio.create_task(automation.run(cloud.pipeline.stop)))
        await cloud.template_ready()
        yield cloud, automation


class AutomationProcess(CliProcess):
    """`cloud-engine automation` on the test's schema, fencing the lab."""

    def __init__(self, pg_target, broker: str, prefix: str, lab: Lab, log: Path) -> None:
        super().__init__(
            ["automation", "--lab-state", str(lab.state_dir), "--up-after", "3"],
            cli_env(pg_target, broker, prefix, ASYNCIO),
            log,
        )


def _lease_held(shared: Path, disk: str) -> bool:
    """Whether virtlockd holds the disk's lease: a lock on the file named
    by the sha256 of the disk's path in the lockspace on the shared pool."""
    lease = shared / ".ce-locks" / hashlib.sha256(disk.encode()).hexdigest()
    fd = os.open(lease, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except BlockingIOError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False
    finally:
        os.close(fd)


async def _ha_run(cloud: Cloud, host_id: uuid.UUID) -> Operation:
    """The host's HA run for its fence, once it has ended."""
    fenced_at = _host(cloud, host_id).fenced_at
    assert fenced_at is not None
    run_of = run_id(host_id, fenced_at.isoformat())

    def ended() -> bool:
        run = cloud.store.load(run_of)
        return isinstance(run, Operation) and run.finished

    await wait_for("the HA run ended", ended, cloud.pipeline)
    run = cloud.store.load(run_of)
    assert isinstance(run, Operation) and run.status == "succeeded", getattr(run, "error", None)
    return run


def _host(cloud: Cloud, host_id: uuid.UUID) -> Host:
    host = cloud.store.load(host_id)
    assert isinstance(host, Host)
    return host


async def test_a_dead_hosts_ha_vms_run_elsewhere_once_and_the_others_are_stopped(
    ha_cloud: tuple[Cloud, Automation], lab: Lab, hosts: list[LabHost]
):
    cloud, automation = ha_cloud
    dead_id = next(iter(cloud.fabric.hosts))
    dead = cloud.fabric.hosts[dead_id]
    # Five 1-vCPU VMs on a 4-core host.
    await cloud.service.execute_async(
        UpdateHostOvercommit(host_id=dead_id, cpu_overcommit=2.0, ram_overcommit=1.0)
    )
    ha = [await cloud.deploy(f"ha-{p}", host_id=dead_id, ha=True, ha_priority=p) for p in (1, 5, 9)]
    plain = [await cloud.deploy(f"plain-{i}", host_id=dead_id) for i in range(2)]
    for vm_id in (*ha, *plain):
        assert running_on([dead], vm_id) == [dead.name]

    lab.power_off(dead.name)

    def recovered() -> bool:
        vms = [cloud.vm(v) for v in ha]
        others = [cloud.vm(v) for v in plain]
        return all(v.state == "Running" and v.host_id != dead_id for v in vms) and all(
            v.state == "Stopped" for v in others
        )

    await wait_for("HA VMs running elsewhere", recovered, cloud.pipeline)
    host = _host(cloud, dead_id)
    assert (host.liveness, host.fenced) == ("Down", True)
    assert "heartbeat" in (host.liveness_reason or "") or host.fenced
    alive = [h for h in hosts if h.name != dead.name]
    for vm_id in ha:
        # Exactly one QEMU for it, on the host the record names.
        assert running_on(alive, vm_id) == [cloud.where(vm_id)]
    for vm_id in plain:
        vm = cloud.vm(vm_id)
        assert running_on(alive, vm_id) == []
        assert "fenced" in (vm.converged_reason or ""), vm.converged_reason
        assert vm.last_host_id == dead_id
    # One host.ha operation for the fence: its steps done, the HA VMs listed
    # highest priority first, one vm.start each under an id derived from it.
    run = await _ha_run(cloud, dead_id)
    assert [(s.name, s.status) for s in run.steps] == [
        ("fence", "done"),
        ("record", "done"),
        ("restart", "done"),
    ]
    assert run.params.vm_ids == tuple(reversed(ha))
    for vm_id in ha:
        start = cloud.store.load(restart_id(run.id, vm_id))
        assert isinstance(start, Operation) and (start.kind, start.status) == (
            "vm.start",
            "succeeded",
        )
    assert sorted(automation.ha.started if automation.ha else []) == sorted(
        restart_id(run.id, v) for v in ha
    )

    # The fenced host boots again with its disk (its old definitions kept):
    # it comes back Up by itself and resumes none of the old copies.
    lab.power_on(dead.name, wipe=False)
    await wait_for("host Up again", lambda: _host(cloud, dead_id).liveness == "Up", cloud.pipeline)
    for vm_id in (*ha, *plain):
        assert running_on([dead], vm_id) == []
    for vm_id in ha:
        assert len(running_on(hosts, vm_id)) == 1


def _beat_since(cloud: Cloud, lab_host: LabHost, since: float) -> bool:
    """Whether the host's agent wrote its heartbeat into the shared pool since."""
    try:
        beat = os.stat(cloud.fabric.dirs[0] / HEARTBEAT_DIR / lab_host.name).st_mtime
    except FileNotFoundError:
        return False
    return beat > since


def _pool_active(cloud: Cloud, lab_host: LabHost) -> bool:
    conn = libvirt.open(lab_host.uri)
    try:
        pool = conn.storagePoolLookupByName(NAMES.pool(cloud.fabric.shared_pool))
        return bool(pool.isActive() and pool.autostart())
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def _unavailable(cloud: Cloud, host_id: uuid.UUID, pool_id: uuid.UUID) -> int:
    """How often the pool was recorded unavailable on the host."""
    return sum(
        1
        for e in cloud.store.events_of(host_id)
        if type(e).__name__ == "SharedPoolUnavailable" and getattr(e, "pool_id", None) == pool_id
    )


async def test_an_idle_host_has_the_shared_pool_beats_and_comes_back_from_a_fence(
    ha_cloud: tuple[Cloud, Automation], lab: Lab, hosts: list[LabHost]
):
    # No VM ever ran here, so no work defined a pool on any host: before the
    # reconciler made sure of the cluster's shared pools, an idle host wrote
    # no heartbeat and, once fenced, stayed Down for good.
    cloud, _ = ha_cloud
    began = time.time()
    await wait_for(
        "every host beating in the shared pool",
        lambda: all(_beat_since(cloud, h, began) for h in hosts),
        cloud.pipeline,
    )
    assert all(_pool_active(cloud, h) for h in hosts)
    # A second shared pool no host can make (its path runs through a file):
    # reported on every host, once for the whole test.
    blocker = cloud.fabric.dirs[0] / "a-file"
    blocker.write_text("")
    cluster = _host(cloud, next(iter(cloud.fabric.hosts))).cluster_id
    bad = (
        await cloud.service.execute_async(
            CreateStoragePool(
                zone_id=cloud.fabric.zone,
                cluster_id=cluster,
                name="unreachable",
                scope="cluster",
                capacity_bytes=1 << 30,
                url=str(blocker / "pool"),
            )
        )
    ).aggregate_id
    await wait_for(
        "the unusable pool recorded on every host",
        lambda: all(_unavailable(cloud, h, bad) for h in cloud.fabric.hosts),
        cloud.pipeline,
    )

    idle_id = next(iter(cloud.fabric.hosts))
    idle = cloud.fabric.hosts[idle_id]
    lab.power_off(idle.name)
    await wait_for("idle host fenced", lambda: _host(cloud, idle_id).fenced, cloud.pipeline)
    assert _host(cloud, idle_id).liveness == "Down"
    await _ha_run(cloud, idle_id)

    # Back empty (its disk wiped: no pool defined), healthy: in service again.
    back = time.time()
    lab.power_on(idle.name)
    await wait_for("host Up again", lambda: _host(cloud, idle_id).liveness == "Up", cloud.pipeline)
    assert _pool_active(cloud, idle) and _beat_since(cloud, idle, back)
    assert all(_unavailable(cloud, h, bad) == 1 for h in cloud.fabric.hosts)


async def test_a_second_qemu_on_a_running_vms_disk_is_refused_by_the_lock_manager(
    ha_cloud: tuple[Cloud, Automation], hosts: list[LabHost]
):
    cloud, _ = ha_cloud
    vm_id = await cloud.deploy("locked")
    home = cloud.fabric.lab_host(cloud.vm(vm_id).host_id)
    other = next(h for h in hosts if h.name != home.name)
    source = libvirt.open(home.uri)
    target = libvirt.open(other.uri)
    try:
        xml = ET.fromstring(source.lookupByUUIDString(str(vm_id)).XMLDesc(0))
        # The same disks under another name and UUID, with no NIC (the
        # copy needs none to open its disk).
        xml.find("name").text = f"ce-copy-{uuid.uuid4().hex[:8]}"  # type: ignore[union-attr]
        xml.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
        devices = xml.find("devices")
        assert devices is not None
        for nic in devices.findall("interface"):
            devices.remove(nic)
        copy = target.defineXML(ET.tostring(xml, encoding="unicode"))
        try:
            with pytest.raises(libvirt.libvirtError) as refused:
                copy.create()
            assert not copy.isActive()
        finally:
            copy.undefine()
        # QEMU's own image locking answers first on one kernel ("Failed to
        # get write lock"); virtlockd's lease is the guard that holds
        # whatever the storage: each disk's lease is a file on the shared
        # pool that the running VM's host holds locked.
        assert "lock" in str(refused.value).lower(), refused.value
        # The disks themselves (their backing templates are read-only: no lease).
        disks = [s.get("file") or "" for s in xml.findall("./devices/disk/source")]
        assert disks
        for disk in disks:
            assert _lease_held(Path(home.shared_pool_path), disk)
        assert running_on(hosts, vm_id) == [home.name]
    finally:
        source.close()
        target.close()


async def test_a_domain_destroyed_behind_the_engines_back_converges_by_policy(
    ha_cloud: tuple[Cloud, Automation], hosts: list[LabHost]
):
    cloud, _ = ha_cloud
    restarted = await cloud.deploy("conv-ha", ha=True)
    stopped = await cloud.deploy("conv-plain")
    first_versions = {v: cloud.vm(v).version for v in (restarted, stopped)}
    for vm_id in (restarted, stopped):
        conn = libvirt.open(cloud.fabric.lab_host(cloud.vm(vm_id).host_id).uri)
        try:
            conn.lookupByUUIDString(str(vm_id)).destroy()
        finally:
            conn.close()

    def converged() -> bool:
        ha_vm, plain_vm = cloud.vm(restarted), cloud.vm(stopped)
        return (
            ha_vm.state == "Running"
            and ha_vm.version > first_versions[restarted] + 2
            and plain_vm.state == "Stopped"
        )

    await wait_for("drift converged", converged, cloud.pipeline)
    assert running_on(hosts, restarted) == [cloud.where(restarted)]
    assert running_on(hosts, stopped) == []
    assert "not HA-enabled" in (cloud.vm(stopped).converged_reason or "")
    assert "restarted (HA)" in (cloud.vm(restarted).converged_reason or "")

    # A domain started by hand that the log says Stopped: recorded Running.
    home = cloud.fabric.lab_host(cloud.vm(stopped).last_host_id)
    conn = libvirt.open(home.uri)
    try:
        conn.lookupByUUIDString(str(stopped)).create()
    finally:
        conn.close()
    await wait_for("recorded Running", lambda: cloud.vm(stopped).state == "Running", cloud.pipeline)
    assert cloud.vm(stopped).host_id == cloud.fabric.host_of(home)
    assert stopped in _host(cloud, cloud.fabric.host_of(home)).reservations


async def test_automation_killed_in_the_middle_of_an_ha_run_finishes_it_after_restart(
    pg_target, service, store, broker, topic_prefix, lab: Lab, hosts: list[LabHost], tmp_path: Path
):
    async with lab_cloud(
        pg_target, service, store, broker, topic_prefix, hosts, tmp_path, effector=False
    ) as cloud:
        _start_effector(cloud, pg_target, broker, topic_prefix)
        log = tmp_path / "automation.log"
        first = AutomationProcess(pg_target, broker, topic_prefix, lab, log)
        try:
            await cloud.template_ready()
            dead_id = next(iter(cloud.fabric.hosts))
            dead = cloud.fabric.hosts[dead_id]
            ha = [
                await cloud.deploy(f"kill-{p}", host_id=dead_id, ha=True, ha_priority=p)
                for p in (1, 2)
            ]
            lab.power_off(dead.name)

            # SIGKILL as soon as the run began: the host fenced, its VMs
            # being recorded Stopped and started elsewhere.
            await wait_for("host fenced", lambda: _host(cloud, dead_id).fenced, cloud.pipeline)
            first.stop(signal.SIGKILL)
            stage = [cloud.vm(v).state for v in ha]
        finally:
            first.stop(signal.SIGKILL)
        second = AutomationProcess(pg_target, broker, topic_prefix, lab, log)
        try:
            await wait_for(
                "HA VMs running elsewhere",
                lambda: all(
                    cloud.vm(v).state == "Running" and cloud.vm(v).host_id != dead_id for v in ha
                ),
                cloud.pipeline,
            )
            run = await _ha_run(cloud, dead_id)
        finally:
            second.stop()
        assert run.params.vm_ids == tuple(reversed(ha))
        alive = [h for h in hosts if h.name != dead.name]
        for vm_id in ha:
            assert running_on(alive, vm_id) == [cloud.where(vm_id)], stage
        # One start each, whoever asked it (the killed process or the new one).
        starts = [
            e for v in ha for e in cloud.store.events_of(v) if type(e).__name__ == "StartRequested"
        ]
        assert len(starts) == 2 * len(ha), stage  # the deploy's and HA's
