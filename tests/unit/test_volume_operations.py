"""Volume operations driven by hand on an in-memory unit of work: attach
(creating an Allocated volume on the VM's pool first), detach, resize,
snapshot and revert; refusals while the VM runs; guards; failures giving
back what they held."""

from uuid import UUID, uuid4

import msgspec
import pytest

from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    FailOperation,
    VmOperation,
    VolumeOperation,
)
from cloud_engine.engine.commands.storage import CreateVolume
from cloud_engine.engine.errors import CapacityExceeded, Conflict, Validation
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.snapshot import Snapshot
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from tests.unit.operation_world import GIB, World


def new_volume(world: World, gb: int = 4) -> UUID:
    return world.run(
        CreateVolume(account="acme", name="extra", zone_id=world.zone, size_bytes=gb * GIB)
    )


def op(world: World, op_id: UUID) -> Operation:
    return world.get(Operation, op_id)


def attach(world: World, volume_id: UUID, vm_id: UUID) -> UUID:
    return world.run(VolumeOperation(kind="volume.attach", volume_id=volume_id, vm_id=vm_id))


def test_attach_creates_the_volume_on_the_vms_pool_then_takes_the_next_device(world: World):
    _, vm_id = world.stopped_vm(network_ids=())  # root on 0, one data disk on 1
    volume_id = new_volume(world)
    op_id = attach(world, volume_id, vm_id)
    volume = world.get(Volume, volume_id)
    assert (volume.state, volume.pool_id, volume.host_id) == ("Creating", world.pool, world.host)
    assert world.get(StoragePool, world.pool).reservations[volume_id] == 4 * GIB
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id == op_id
    # The VM cannot be started while its disk is being made.
    with pytest.raises(Conflict, match=r"volume\.attach"):
        world.run(VmOperation(kind="vm.start", vm_id=vm_id))

    world.run(AdvanceOperation(operation_id=op_id))  # still Creating: waits
    assert op(world, op_id).current_step == "create"
    volume.created()
    world.run(AdvanceOperation(operation_id=op_id))
    assert op(world, op_id).status == "succeeded"
    assert (volume.state, volume.vm_id, volume.device_id) == ("Attached", vm_id, 2)
    vm = world.get(VirtualMachine, vm_id)
    assert vm.disks[2] == volume_id and set(vm.disks) == {0, 1, 2}
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None
    assert world.get(ResourceGuard, guard_id(volume_id)).operation_id is None

    # Detach frees the device; the next attach reuses it.
    detach = world.run(VolumeOperation(kind="volume.detach", volume_id=volume_id))
    assert op(world, detach).status == "succeeded"
    assert volume.state == "Ready" and 2 not in vm.disks
    again = attach(world, volume_id, vm_id)  # Ready: attached at once
    assert op(world, again).status == "succeeded" and volume.device_id == 2


def test_volume_operations_are_refused_while_the_vm_runs(world: World):
    _, vm_id = world.running_vm(network_ids=(), data_disks_gb=())
    volume_id = new_volume(world)
    with pytest.raises(Conflict, match="is Running; its volumes change only while it is stopped"):
        attach(world, volume_id, vm_id)
    root = next(iter(world.get(VirtualMachine, vm_id).disks.values()))
    for kind, extra in (
        ("volume.resize", {"new_size_bytes": 20 * GIB}),
        ("volume.snapshot", {}),
    ):
        with pytest.raises(Conflict, match="is Running"):
            world.run(VolumeOperation(kind=kind, volume_id=root, **extra))
    # Nothing was recorded by the refusals.
    assert world.get(Volume, volume_id).state == "Allocated"
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_root_volumes_stay_with_their_vm_and_missing_fields_are_named(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    with pytest.raises(Validation, match="root volume cannot be detached"):
        world.run(VolumeOperation(kind="volume.detach", volume_id=root))
    with pytest.raises(Validation) as missing:
        world.run(VolumeOperation(kind="volume.resize", volume_id=root))
    assert missing.value.field == "new_size_bytes"
    with pytest.raises(Validation) as missing:
        world.run(VolumeOperation(kind="volume.attach", volume_id=root))
    assert missing.value.field == "vm_id"
    with pytest.raises(Conflict, match="not attached"):
        world.run(VolumeOperation(kind="volume.detach", volume_id=new_volume(world)))


def test_resize_grows_the_reservation_and_gives_it_back_on_failure(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    pool = world.get(StoragePool, world.pool)
    ok = world.run(VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=20 * GIB))
    assert pool.reservations[root] == 20 * GIB
    volume = world.get(Volume, root)
    volume.resized()
    world.run(AdvanceOperation(operation_id=ok))
    assert op(world, ok).status == "succeeded" and volume.size_bytes == 20 * GIB

    with pytest.raises(Validation, match="only grow"):
        world.run(VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=GIB))
    bad = world.run(VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=30 * GIB))
    assert pool.reservations[root] == 30 * GIB
    volume.fail("qemu-img: Failed to grow")
    world.run(AdvanceOperation(operation_id=bad))
    failed = op(world, bad)
    assert (failed.status, failed.error) == ("compensated", "qemu-img: Failed to grow")
    assert pool.reservations[root] == 20 * GIB
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_resize_beyond_the_pool_is_refused_recording_nothing(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    with pytest.raises(CapacityExceeded):
        world.run(VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=500 * GIB))
    assert world.get(Volume, root).state == "Attached"
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_snapshot_then_revert_the_root_disk_of_a_stopped_vm(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    snap_id = uuid4()
    take = world.run(
        VolumeOperation(
            kind="volume.snapshot", volume_id=root, snapshot_id=snap_id, snapshot_name="before"
        )
    )
    snapshot = world.get(Snapshot, snap_id)
    assert (snapshot.state, snapshot.name, snapshot.volume_id) == ("Creating", "before", root)
    # The snapshot's own events find the operation through its guard.
    assert world.get(ResourceGuard, guard_id(snap_id)).operation_id == take
    snapshot.created()
    world.run(AdvanceOperation(operation_id=take))
    assert op(world, take).status == "succeeded"
    assert world.get(ResourceGuard, guard_id(snap_id)).operation_id is None

    revert = world.run(VolumeOperation(kind="volume.revert", volume_id=root, snapshot_id=snap_id))
    volume = world.get(Volume, root)
    assert volume.reverting_to == snap_id and volume.state == "Attached"
    world.run(AdvanceOperation(operation_id=revert))  # the effector has not answered
    assert op(world, revert).status in ("pending", "running")
    volume.reverted()
    world.run(AdvanceOperation(operation_id=revert))
    assert op(world, revert).status == "succeeded"

    with pytest.raises(Validation, match="another volume"):
        world.run(
            VolumeOperation(kind="volume.revert", volume_id=new_volume(world), snapshot_id=snap_id)
        )


def test_a_failed_snapshot_fails_its_operation(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    snap_id = uuid4()
    take = world.run(VolumeOperation(kind="volume.snapshot", volume_id=root, snapshot_id=snap_id))
    world.get(Snapshot, snap_id).fail("qemu-img: image is locked")
    world.run(AdvanceOperation(operation_id=take))
    assert (op(world, take).status, op(world, take).error) == (
        "failed",
        "qemu-img: image is locked",
    )
    assert world.get(ResourceGuard, guard_id(root)).operation_id is None


def test_a_step_without_answer_is_timed_out_and_its_work_failed(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    volume_id = new_volume(world)
    op_id = attach(world, volume_id, vm_id)
    world.run(FailOperation(operation_id=op_id, reason="no answer in 600 s", timed_out=True))
    assert op(world, op_id).status == "compensated"
    volume = world.get(Volume, volume_id)
    assert volume.state == "Error" and volume.last_error == "no answer in 600 s"
    assert volume_id not in world.get(StoragePool, world.pool).reservations
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_expunge_detaches_volumes_attached_later_and_keeps_them(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    volume_id = new_volume(world)
    op_id = attach(world, volume_id, vm_id)
    world.get(Volume, volume_id).created()
    world.run(AdvanceOperation(operation_id=op_id))
    world.run(VmOperation(kind="vm.destroy", vm_id=vm_id))
    expunge = world.run(VmOperation(kind="vm.expunge", vm_id=vm_id))
    world.get(VirtualMachine, vm_id).expunged()
    world.run(AdvanceOperation(operation_id=expunge))
    assert op(world, expunge).status == "succeeded"
    volume = world.get(Volume, volume_id)
    assert (volume.state, volume.vm_id) == ("Ready", None)
    assert world.get(VirtualMachine, vm_id).disks == {}


def snapshot_of(world: World, volume_id: UUID, name: str) -> UUID:
    snap_id = uuid4()
    take = world.run(
        VolumeOperation(
            kind="volume.snapshot", volume_id=volume_id, snapshot_id=snap_id, snapshot_name=name
        )
    )
    world.get(Snapshot, snap_id).created()
    world.run(AdvanceOperation(operation_id=take))
    return snap_id


def revert_to(world: World, volume_id: UUID, snap_id: UUID) -> UUID:
    revert = world.run(
        VolumeOperation(kind="volume.revert", volume_id=volume_id, snapshot_id=snap_id)
    )
    world.get(Volume, volume_id).reverted()
    world.run(AdvanceOperation(operation_id=revert))
    return revert


def test_revert_brings_back_the_size_the_snapshot_was_taken_at(world: World):
    # qemu-img snapshot -a restores the virtual size too: 1 GiB, resized to
    # 2 GiB, reverted -> 1 GiB again, in the record and on the pool.
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    volume, pool = world.get(Volume, root), world.get(StoragePool, world.pool)
    small = volume.size_bytes
    before = snapshot_of(world, root, "before")
    assert world.get(Snapshot, before).size_bytes == small
    grow = world.run(
        VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=small + 8 * GIB)
    )
    volume.resized()
    world.run(AdvanceOperation(operation_id=grow))
    after = snapshot_of(world, root, "after")

    assert op(world, revert_to(world, root, before)).status == "succeeded"
    assert volume.size_bytes == small and pool.reservations[root] == small
    # Growing again is a resize like any other (it was refused as no growth).
    regrow = world.run(
        VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=small + GIB)
    )
    volume.resized()
    world.run(AdvanceOperation(operation_id=regrow))
    assert pool.reservations[root] == small + GIB

    # Forward to the larger snapshot: the space is reserved before the effector runs.
    forward = world.run(VolumeOperation(kind="volume.revert", volume_id=root, snapshot_id=after))
    assert pool.reservations[root] == small + 8 * GIB
    assert op(world, forward).status in ("pending", "running")


def test_revert_to_a_larger_snapshot_beyond_the_pool_is_refused(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    root = world.get(VirtualMachine, vm_id).disks[0]
    volume, pool = world.get(Volume, root), world.get(StoragePool, world.pool)
    before = snapshot_of(world, root, "before")
    grown = pool.free_bytes + volume.size_bytes
    world.run(VolumeOperation(kind="volume.resize", volume_id=root, new_size_bytes=grown))
    volume.resized()
    world.run(AdvanceOperation(operation_id=world.get(ResourceGuard, guard_id(vm_id)).operation_id))
    after = snapshot_of(world, root, "full")
    revert_to(world, root, before)
    # Someone else takes the space meanwhile.
    other = new_volume(world, gb=1)
    pool.reserve(other, pool.free_bytes)

    with pytest.raises(CapacityExceeded):
        world.run(VolumeOperation(kind="volume.revert", volume_id=root, snapshot_id=after))
    assert volume.reverting_to is None
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_snapshots_recorded_before_sizes_were_kept_still_load_and_revert(world: World):
    # Created records of older releases have no size_bytes (an optional
    # field, same event version): they decode, and a revert to them keeps
    # the volume's size, as before.
    mapper = MsgspecMapper()
    snapshot = Snapshot.create(uuid4(), "old", size_bytes=GIB)
    stored = mapper.to_stored_event(snapshot.collect_events()[0])
    old = msgspec.json.decode(stored.state)
    del old["size_bytes"]
    event = mapper.decode(stored.originator_id, 1, stored.topic, msgspec.json.encode(old))
    assert event.mutate(None).size_bytes is None  # type: ignore[attr-defined]

    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    volume = world.get(Volume, world.get(VirtualMachine, vm_id).disks[0])
    size = volume.size_bytes
    volume.revert_requested(uuid4(), None)
    volume.reverted()
    assert volume.size_bytes == size
