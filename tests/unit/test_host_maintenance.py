"""host.maintenance driven by hand on an in-memory unit of work: the
drain's states, the drainer's reports, the cancel, and MigrateOffHost
refused once the drain has ended."""

from uuid import uuid4

import pytest

from cloud_engine.engine.commands.maintenance import (
    CancelHostMaintenance,
    HostOperation,
    MigrateOffHost,
    MoveOffPool,
    PoolOperation,
    ReportHostDrain,
    ReportPoolDrain,
)
from cloud_engine.engine.commands.operations import AdvanceOperation, VmOperation
from cloud_engine.engine.commands.storage import MarkVolumeMoved
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.errors import Conflict, DomainError, InvalidTransition, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.host_maintenance import migration_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.pool_maintenance import move_id
from cloud_engine.engine.operations.registry import KINDS
from cloud_engine.engine.virtual.vm import VirtualMachine
from tests.unit.operation_world import GIB, World


def drain(world: World):
    return world.run(HostOperation(kind="host.maintenance", host_id=world.host))


def test_a_drain_blocks_cancels_and_finishes(world: World):
    _, vm_id = world.running_vm(network_ids=())
    host = world.get(Host, world.host)
    op_id = drain(world)
    op = world.get(Operation, op_id)
    assert host.state == "PrepareForMaintenance" and op.current_step == "migrate"
    assert not KINDS["host.maintenance"].deadline  # the sweep never times it out
    # Nothing new is placed on it.
    with pytest.raises(InvalidTransition):
        host.reserve(uuid4(), 1, 64)
    with pytest.raises(Conflict, match=r"host\.maintenance"):
        drain(world)

    world.run(ReportHostDrain(operation_id=op_id, remaining=1, blocked=("vm x: no room",)))
    assert host.state == "ErrorInMaintenance" and host.maintenance_blockers == ("vm x: no room",)
    # Nothing left on the record but a reservation still held: it waits.
    world.run(ReportHostDrain(operation_id=op_id, remaining=0))
    assert op.status == "running"

    migrate = world.run(MigrateOffHost(operation_id=op_id, vm_id=vm_id))
    assert migrate == migration_id(op_id, vm_id)
    world.run(CancelHostMaintenance(host_id=world.host))
    assert host.state == "Enabled" and host.maintenance_blockers == ()
    assert (op.status, op.error) == ("failed", "maintenance cancelled by an admin")
    assert world.get(ResourceGuard, guard_id(world.host)).operation_id is None
    # A cancelled drain asks for no migration.
    with pytest.raises(Conflict, match="is failed"):
        world.run(MigrateOffHost(operation_id=op_id, vm_id=vm_id))


def test_a_drain_of_an_empty_host_ends_in_maintenance(world: World):
    op_id = drain(world)
    world.run(ReportHostDrain(operation_id=op_id, remaining=0))
    op, host = world.get(Operation, op_id), world.get(Host, world.host)
    assert op.status == "succeeded" and host.state == "Maintenance"
    assert [s.status for s in op.steps] == ["done", "done", "done"]
    with pytest.raises(DomainError, match="Maintenance"):  # not placeable
        world.running_vm(network_ids=())
    world.run(CancelHostMaintenance(host_id=world.host))
    assert host.state == "Enabled"


def test_migrate_off_host_only_for_a_vm_of_that_host(world: World):
    _, vm_id = world.stopped_vm(network_ids=())
    other = world.add_host("h2")
    op_id = world.run(HostOperation(kind="host.maintenance", host_id=other))
    with pytest.raises(Conflict, match="is not on host"):
        world.run(MigrateOffHost(operation_id=op_id, vm_id=vm_id))
    # Its own host's drain asks once; the VM is busy with that migration.
    world.run(MigrateOffHost(operation_id=drain(world), vm_id=vm_id))
    with pytest.raises(Conflict, match=r"vm\.migrate"):
        world.run(VmOperation(kind="vm.migrate", vm_id=vm_id))


def test_a_pool_drain_refuses_disks_in_use_and_moves_within_its_scope(world: World):
    _, vm_id = world.running_vm(network_ids=(), data_disks_gb=())
    with pytest.raises(Conflict, match=r"which is Running \(stop it first\)"):
        world.run(PoolOperation(kind="storage_pool.maintenance", pool_id=world.pool))
    assert world.get(StoragePool, world.pool).state == "Enabled"
    stop = world.run(VmOperation(kind="vm.stop", vm_id=vm_id))
    world.get(VirtualMachine, vm_id).mark_stopped()
    world.run(AdvanceOperation(operation_id=stop))
    op_id = world.run(PoolOperation(kind="storage_pool.maintenance", pool_id=world.pool))
    assert world.get(StoragePool, world.pool).state == "PrepareForMaintenance"
    root = world.get(VirtualMachine, vm_id).disks[0]
    local = world.run(
        CreateStoragePool(
            zone_id=world.zone, name="l", scope="host", host_id=world.host,
            capacity_bytes=100 * GIB, url="/l",
        )
    )  # fmt: skip
    with pytest.raises(Validation, match="scope"):
        world.run(MoveOffPool(operation_id=op_id, volume_id=root, pool_id=local))
    other = world.run(
        CreateStoragePool(
            zone_id=world.zone, cluster_id=world.cluster, name="c2", scope="cluster",
            capacity_bytes=100 * GIB, url="/c2",
        )
    )  # fmt: skip
    world.run(MoveOffPool(operation_id=op_id, volume_id=root, pool_id=other))
    world.run(MarkVolumeMoved(volume_id=root))
    world.run(AdvanceOperation(operation_id=move_id(op_id, root)))
    world.run(ReportPoolDrain(operation_id=op_id, remaining=0))
    assert world.get(Operation, op_id).status == "succeeded"
    assert world.get(StoragePool, world.pool).state == "Maintenance"
