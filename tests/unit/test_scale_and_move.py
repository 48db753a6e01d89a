"""vm.scale and volume.migrate driven by hand on an in-memory unit of work:
the steps, the refusals (nothing recorded), the effector's answer settling
the pools' space, and a timed-out move compensated."""

from uuid import UUID

import pytest

from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    FailOperation,
    VmOperation,
    VolumeOperation,
)
from cloud_engine.engine.commands.storage import CreateVolume, FailVolumeMove, MarkVolumeMoved
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from tests.unit.operation_world import GIB, World


def scale(world: World, vm_id: UUID, **size: int) -> UUID:
    return world.run(VmOperation(kind="vm.scale", vm_id=vm_id, **size))


def test_scale_changes_a_stopped_vm_in_one_step(world: World):
    _, vm_id = world.stopped_vm(network_ids=())
    op_id = scale(world, vm_id, cpus=4, ram_mb=4096)
    op = world.get(Operation, op_id)
    assert op.status == "succeeded" and [s.name for s in op.steps] == ["scale"]
    assert (op.params.cpus, op.params.ram_mb) == (4, 4096)
    vm = world.get(VirtualMachine, vm_id)
    assert (vm.spec.cpus, vm.spec.ram_mb, vm.spec.root_disk_gb) == (4, 4096, 10)
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None
    # Down again, one field: the other is kept. A start reserves the new size.
    scale(world, vm_id, ram_mb=1024)
    assert (vm.spec.cpus, vm.spec.ram_mb) == (4, 1024)


def test_scale_is_refused_unless_stopped_and_changed(world: World):
    _, vm_id = world.running_vm(network_ids=())
    with pytest.raises(InvalidTransition, match="scale"):
        scale(world, vm_id, cpus=4)
    vm = world.get(VirtualMachine, vm_id)
    assert vm.spec.cpus == 2
    stop = world.run(VmOperation(kind="vm.stop", vm_id=vm_id))
    vm.mark_stopped()
    world.run(AdvanceOperation(operation_id=stop))
    with pytest.raises(Validation, match="needs cpus or ram_mb"):
        scale(world, vm_id)
    with pytest.raises(Validation, match="already"):
        scale(world, vm_id, cpus=2, ram_mb=2048)


def test_scale_swaps_a_held_reservation_or_refuses_whole(world: World):
    _, vm_id = world.stopped_vm(network_ids=())
    vm = world.get(VirtualMachine, vm_id)
    host = world.get(Host, world.host)
    # A stopped VM that still holds capacity (as a placed, unstarted one does).
    host.reserve(vm_id, vm.spec.cpus, vm.spec.ram_mb)
    scale(world, vm_id, cpus=6)
    assert host.reservations[vm_id].cpus == 6
    with pytest.raises(CapacityExceeded, match="vCPUs free"):
        scale(world, vm_id, cpus=9)
    assert host.reservations[vm_id].cpus == 6 and vm.spec.cpus == 6


def second_pool(world: World, **extra) -> UUID:
    return world.run(
        CreateStoragePool(
            zone_id=world.zone,
            name=extra.pop("name", "second"),
            capacity_bytes=extra.pop("capacity_bytes", 50 * GIB),
            url=extra.pop("url", "/var/lib/pool2"),
            cluster_id=extra.pop("cluster_id", world.cluster),
            scope=extra.pop("scope", "cluster"),
            **extra,
        )
    )


def migrate(world: World, volume_id: UUID, pool_id: UUID) -> UUID:
    return world.run(VolumeOperation(kind="volume.migrate", volume_id=volume_id, pool_id=pool_id))


def test_move_a_stopped_vms_root_disk(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    target = second_pool(world)
    vm = world.get(VirtualMachine, vm_id)
    root = vm.disks[0]
    op_id = migrate(world, root, target)
    volume = world.get(Volume, root)
    assert (volume.moving_to, volume.moving_host_id) == (target, vm.last_host_id)
    assert world.get(StoragePool, target).reservations[root] == 10 * GIB
    # The VM cannot start while its disk moves.
    with pytest.raises(Conflict, match=r"volume\.migrate"):
        world.run(VmOperation(kind="vm.start", vm_id=vm_id))
    world.run(AdvanceOperation(operation_id=op_id))
    assert world.get(Operation, op_id).current_step == "move"
    world.run(MarkVolumeMoved(volume_id=root))
    world.run(AdvanceOperation(operation_id=op_id))
    assert world.get(Operation, op_id).status == "succeeded"
    assert volume.pool_id == target and vm.pool_id == target
    assert root not in world.get(StoragePool, world.pool).reservations
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_a_failed_move_gives_the_new_space_back(world: World):
    volume_id = world.run(
        CreateVolume(account="acme", name="d", zone_id=world.zone, size_bytes=2 * GIB)
    )
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=(3,))
    data = world.get(VirtualMachine, vm_id).disks[1]
    target = second_pool(world)
    op_id = migrate(world, data, target)
    world.run(FailVolumeMove(volume_id=data, reason="copy failed: disk full"))
    world.run(AdvanceOperation(operation_id=op_id))
    op = world.get(Operation, op_id)
    assert (op.status, op.error) == ("compensated", "copy failed: disk full")
    assert world.get(Volume, data).pool_id == world.pool
    assert data not in world.get(StoragePool, target).reservations
    assert data in world.get(StoragePool, world.pool).reservations
    # A volume never placed has no pool to move from.
    with pytest.raises(Conflict, match="on no pool"):
        migrate(world, volume_id, target)


def test_a_timed_out_move_is_abandoned_and_a_late_result_refused(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    target = second_pool(world)
    op_id = migrate(world, root, target)
    world.run(FailOperation(operation_id=op_id, reason="no answer", timed_out=True))
    assert world.get(Operation, op_id).status == "compensated"
    assert world.get(Volume, root).moving_to is None
    with pytest.raises(InvalidTransition):
        world.run(MarkVolumeMoved(volume_id=root))


def test_move_refusals_record_nothing(world: World):
    _, running = world.running_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, running).disks[0]
    target = second_pool(world)
    with pytest.raises(Conflict, match="is Running"):
        migrate(world, root, target)
    _, vm_id = world.stopped_vm(name="db", network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    with pytest.raises(Validation, match=r"on pool .* already"):
        migrate(world, root, world.pool)
    other = world.add_host("h2")
    local = second_pool(world, name="l2", url="/l2", scope="host", host_id=other)
    with pytest.raises(Conflict, match="does not reach pool"):
        migrate(world, root, local)
    small = second_pool(world, name="small", url="/s", capacity_bytes=GIB)
    with pytest.raises(CapacityExceeded):
        migrate(world, root, small)
    assert world.get(Volume, root).moving_to is None
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None
