"""A host's maintenance as an operation on the lab (real PostgreSQL,
broker, three libvirtds): the drainer live-migrates the four running VMs
of a host to the others and re-homes a stopped one, the host ends in
Maintenance and takes no VM until it exits; a drain cancelled half-way
leaves every VM running exactly once where its record says, with its
capacity there only; a drainer killed (SIGKILL) in the middle of a drain
is started again and finishes it, no VM migrated twice; a storage pool's
drain is refused while a VM using it runs and, once it is stopped, moves
its volumes to the other pool of the cluster, from which it starts."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from cloud_engine.automation.drain import Drainer
from cloud_engine.engine.commands.fabric import ExitHostMaintenance
from cloud_engine.engine.commands.maintenance import (
    CancelHostMaintenance,
    HostOperation,
    PoolOperation,
)
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.host_maintenance import migration_id
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import read_model
from cloud_engine.lab import LabHost
from tests.integration.cli_process import ASYNCIO, CliProcess, cli_env
from tests.integration.effectors.effector_pipeline import wait_for
from tests.integration.lab.lab_cloud import (
    Cloud,
    GiB,
    domain_states,
    finish,
    reserved_on,
    running_on,
)

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]


def host(cloud: Cloud, host_id: uuid.UUID) -> Host:
    found = cloud.store.load(host_id)
    assert isinstance(found, Host)
    return found


async def four_on(cloud: Cloud, host_id: uuid.UUID) -> list[uuid.UUID]:
    return list(await asyncio.gather(*(cloud.deploy(f"vm-{i}", host_id=host_id) for i in range(4))))


def start_drainer(cloud: Cloud) -> None:
    drainer = Drainer(cloud.service, cloud.store, cloud.pipeline.target, interval_s=0.2)
    cloud.pipeline.tasks.append(asyncio.create_task(drainer.run(cloud.pipeline.stop)))


async def drain(cloud: Cloud, host_id: uuid.UUID) -> uuid.UUID:
    result = await cloud.service.execute_async(
        HostOperation(kind="host.maintenance", host_id=host_id)
    )
    return result.aggregate_id


async def projected_state(cloud: Cloud, host_id: uuid.UUID, state: str) -> None:
    target = cloud.pipeline.target
    conn = await connect(target)
    try:

        async def there() -> bool:
            found = await conn.fetchval(
                f"SELECT state FROM {read_model(target.schema, 'host')} WHERE id = $1", host_id
            )
            return bool(found == state)

        await wait_for(f"host {host_id} {state} in its read model", there, cloud.pipeline)
    finally:
        await conn.close()


def migrations_of(cloud: Cloud, vm_id: uuid.UUID) -> int:
    """How many migrations the log ever asked of the VM."""
    return sum(
        1
        for e in cloud.store.recorder.select_events_of([vm_id])
        if e.topic.endswith(".MigrationRequested")
    )


def consistent(cloud: Cloud, hosts: list[LabHost], vm_id: uuid.UUID) -> str:
    """The VM runs on exactly one lab host, the one its record names, and
    holds capacity there only; returns that host's name."""
    where = running_on(hosts, vm_id)
    assert len(where) == 1, (vm_id, where)
    vm = cloud.vm(vm_id)
    assert vm.state == "Running" and cloud.where(vm_id) == where[0]
    assert reserved_on(cloud.store, cloud.fabric, vm_id) == where
    guard = cloud.store.load(guard_id(vm_id))
    assert not isinstance(guard, ResourceGuard) or guard.operation_id is None
    return where[0]


async def test_drain_moves_every_vm_then_exit(cloud: Cloud, hosts: list[LabHost]):
    start_drainer(cloud)
    h1 = cloud.fabric.host_of(hosts[0])
    parked = await cloud.deploy("parked", host_id=h1)
    assert await cloud.operate("vm.stop", parked) == ("succeeded", "")
    vms = await four_on(cloud, h1)
    assert {cloud.where(v) for v in vms} == {"h1"}

    op = await finish(cloud.pipeline, cloud.store, await drain(cloud, h1))
    assert op.status == "succeeded", op.error
    assert [(s.name, s.status) for s in op.steps] == [
        ("prepare", "done"),
        ("migrate", "done"),
        ("maintenance", "done"),
    ]
    assert host(cloud, h1).state == "Maintenance" and not host(cloud, h1).reservations
    for vm_id in vms:
        assert consistent(cloud, hosts, vm_id) != "h1"
        assert migrations_of(cloud, vm_id) == 1
    # The stopped one re-homed: its record and its definition left h1.
    stopped = cloud.vm(parked)
    assert stopped.state == "Stopped" and stopped.last_host_id not in (None, h1)
    assert "h1" not in domain_states(hosts, parked)

    # Nothing is placed on a host in maintenance; after exit it is again.
    with pytest.raises(AssertionError, match="host"):
        await cloud.deploy("refused", host_id=h1)
    await cloud.service.execute_async(ExitHostMaintenance(host_id=h1))
    await projected_state(cloud, h1, "Enabled")  # what the planner reads
    back = await cloud.deploy("back", host_id=h1)
    assert running_on(hosts, back) == ["h1"]


async def test_a_drain_cancelled_half_way_leaves_everything_consistent(
    cloud: Cloud, hosts: list[LabHost]
):
    start_drainer(cloud)
    h1 = cloud.fabric.host_of(hosts[0])
    vms = await four_on(cloud, h1)
    op_id = await drain(cloud, h1)
    await wait_for(
        "a first migration",
        lambda: any(cloud.store.load(migration_id(op_id, v)) is not None for v in vms),
        cloud.pipeline,
    )
    await cloud.service.execute_async(CancelHostMaintenance(host_id=h1))

    op = await finish(cloud.pipeline, cloud.store, op_id)
    assert (op.status, op.error) == ("failed", "maintenance cancelled by an admin")
    assert host(cloud, h1).state == "Enabled"
    # The migrations asked before the cancel end; none is asked after it.
    asked = [cloud.store.load(migration_id(op_id, v)) is not None for v in vms]
    assert any(asked)
    ended = [
        await finish(cloud.pipeline, cloud.store, migration_id(op_id, v))
        for v, was in zip(vms, asked, strict=True)
        if was
    ]
    await asyncio.sleep(1.0)  # a few drainer rounds
    assert [cloud.store.load(migration_id(op_id, v)) is not None for v in vms] == asked
    places = [consistent(cloud, hosts, vm_id) for vm_id in vms]
    # Those whose migration succeeded moved, the others are still on h1.
    assert sum(1 for p in places if p != "h1") == sum(1 for c in ended if c.status == "succeeded")


class DrainerProcess(CliProcess):
    """`cloud-engine drain` on the test's schema."""

    def __init__(self, cloud: Cloud, log: Path) -> None:
        super().__init__(["drain"], cli_env(cloud.pipeline.target, extra=ASYNCIO), log)


async def test_a_killed_drainer_finishes_after_restart(
    cloud: Cloud, hosts: list[LabHost], tmp_path: Path
):
    h1 = cloud.fabric.host_of(hosts[0])
    vms = await four_on(cloud, h1)
    log = tmp_path / "drainer.log"
    first = DrainerProcess(cloud, log)
    try:
        op_id = await drain(cloud, h1)
        await wait_for(
            "a first migration",
            lambda: any(cloud.store.load(migration_id(op_id, v)) is not None for v in vms),
            cloud.pipeline,
        )
    finally:
        first.kill()
    second = DrainerProcess(cloud, log)
    try:
        op = await finish(cloud.pipeline, cloud.store, op_id)
    finally:
        second.stop()
    assert op.status == "succeeded", (op.error, log.read_text()[-3000:])
    assert host(cloud, h1).state == "Maintenance"
    for vm_id in vms:
        assert consistent(cloud, hosts, vm_id) != "h1"
        assert migrations_of(cloud, vm_id) == 1  # the first drainer's or the second's
    await cloud.service.execute_async(CancelHostMaintenance(host_id=h1))
    assert host(cloud, h1).state == "Enabled"


async def test_a_pool_drain_moves_stopped_vms_volumes_or_refuses(
    cloud: Cloud, hosts: list[LabHost]
):
    start_drainer(cloud)
    fabric = cloud.fabric
    vm_id = await cloud.deploy("on-shared")
    disks = list(cloud.vm(vm_id).disks.values())
    shared = cloud.store.load(fabric.shared_pool)
    assert isinstance(shared, StoragePool)
    other_dir = fabric.dirs[0].with_name(f"{fabric.dirs[0].name}-2")
    fabric.dirs.append(other_dir)
    other = (
        await cloud.service.execute_async(
            CreateStoragePool(
                zone_id=fabric.zone, cluster_id=shared.cluster_id, name="shared-2",
                scope="cluster", capacity_bytes=64 * GiB, url=str(other_dir),
            )
        )
    ).aggregate_id  # fmt: skip
    drain_pool = PoolOperation(kind="storage_pool.maintenance", pool_id=fabric.shared_pool)
    with pytest.raises(Conflict, match=r"which is Running \(stop it first\)"):
        await cloud.service.execute_async(drain_pool)
    assert cloud.store.load(fabric.shared_pool).state == "Enabled"  # type: ignore[union-attr]

    assert await cloud.operate("vm.stop", vm_id) == ("succeeded", "")
    result = await cloud.service.execute_async(drain_pool)
    op = await finish(cloud.pipeline, cloud.store, result.aggregate_id)
    assert op.status == "succeeded", op.error
    pool = cloud.store.load(fabric.shared_pool)
    assert isinstance(pool, StoragePool) and pool.state == "Maintenance"
    assert not pool.reservations
    for volume_id in disks:
        volume = cloud.store.load(volume_id)
        assert isinstance(volume, Volume) and volume.pool_id == other
        assert (other_dir / f"{volume_id}.qcow2").exists()
        assert not (fabric.dirs[0] / f"{volume_id}.qcow2").exists()
    assert cloud.vm(vm_id).pool_id == other
    assert await cloud.operate("vm.start", vm_id) == ("succeeded", "")
    assert len(running_on(hosts, vm_id)) == 1
