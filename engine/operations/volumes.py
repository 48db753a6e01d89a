"""Volume operations: attach, detach, resize, snapshot, revert.

Each is an Operation on the volume that holds the volume's guard and, when
the volume is (to be) attached to a VM, that VM's guard too: a VM start
cannot race a disk being changed under it, nor two attaches pick one device.

The effectors change disks with qemu-img and libvirt storage calls on the
image file, which QEMU locks while its guest runs. So every volume operation
touching a VM's disk needs that VM stopped (or destroyed, or in Error), and
is refused at once with that reason otherwise, instead of failing half-way
on the host. An attach takes effect at the VM's next start, whose domain is
defined with every attached volume.

    volume.attach    create (an Allocated volume is created on the VM's
                     pool, on the VM's host) -> attach (the VM's lowest free
                     device)
    volume.detach    detach (done at once; root volumes stay with their VM)
    volume.resize    resize (the pool reservation grows first and shrinks
                     back if the effector fails)
    volume.snapshot  snapshot (a Snapshot created; the effector makes it)
    volume.revert    revert (the effector applies the snapshot)
"""

from __future__ import annotations

from engine.aggregate import require
from engine.errors import Conflict, NotFound, Validation
from engine.fabric.storage_pool import StoragePool
from engine.operations import deploy, guard
from engine.operations.operation import Operation
from engine.unit_of_work import UnitOfWork
from engine.virtual.snapshot import REVERTIBLE, Snapshot, SnapshotKind
from engine.virtual.vm import VirtualMachine
from engine.virtual.volume import Volume

STEPS: dict[str, tuple[str, ...]] = {
    "volume.attach": ("create", "attach"),
    "volume.detach": ("detach",),
    "volume.resize": ("resize",),
    "volume.snapshot": ("snapshot",),
    "volume.revert": ("revert",),
}
# The states of a VM whose disks are not in use.
VM_IDLE = ("Stopped", "Destroyed", "Error")


def vm_of(uow: UnitOfWork, op: Operation) -> VirtualMachine | None:
    return None if op.params.vm_id is None else uow.find(VirtualMachine, op.params.vm_id)


def require_idle(vm: VirtualMachine, kind: str) -> None:
    if vm.state not in VM_IDLE:
        raise Conflict(
            f"{kind} refused: vm {vm.id} is {vm.state}; its volumes change only while it is"
            " stopped (QEMU holds the disk images of a running guest)",
            field="vm_id",
        )


def begin(
    uow: UnitOfWork,
    op: Operation,
    volume: Volume,
    snapshot_name: str,
    snapshot_kind: SnapshotKind,
) -> None:
    """The first action, in the operation's creating transaction (a refused
    operation records nothing). The VM's guard is already held."""
    kind, params = op.kind, op.params
    vm = vm_of(uow, op)
    if vm is not None:
        require_idle(vm, kind)
    if kind == "volume.attach":
        assert vm is not None  # the command names it
        _begin_attach(uow, volume, vm)
    elif kind == "volume.detach":
        if vm is None:
            raise Conflict(f"volume {volume.id} is not attached", field="volume_id")
        volume.detach()
        vm.disk_detached(volume.id)
    elif kind == "volume.resize":
        assert params.size_bytes is not None  # the command requires it
        volume.require_state(["Ready", "Attached"], "resize")
        require(
            params.size_bytes > volume.size_bytes,
            f"volumes only grow: {params.size_bytes} is not above {volume.size_bytes}",
            field="new_size_bytes",
        )
        if volume.pool_id is not None:
            uow.get(StoragePool, volume.pool_id).resize_reservation(volume.id, params.size_bytes)
        volume.resize_requested(params.size_bytes)
    elif kind == "volume.snapshot":
        volume.require_snapshot_source()
        assert params.target_id is not None
        uow.add(
            Snapshot.create(
                volume.id,
                snapshot_name,
                snapshot_kind,
                size_bytes=volume.size_bytes,
                id=params.target_id,
            )
        )
    elif kind == "volume.revert":
        assert params.target_id is not None
        snapshot = uow.find(Snapshot, params.target_id)
        if snapshot is None:
            raise NotFound(f"snapshot {params.target_id} not found", field="snapshot_id")
        require(
            snapshot.volume_id == volume.id, "snapshot is of another volume", field="snapshot_id"
        )
        snapshot.require_state(REVERTIBLE, "revert to")
        restored = snapshot.size_bytes
        if restored is not None and restored > volume.size_bytes and volume.pool_id is not None:
            # Back to a larger size (a snapshot taken after a resize): the
            # space is reserved first, as for a resize.
            uow.get(StoragePool, volume.pool_id).resize_reservation(volume.id, restored)
        volume.revert_requested(snapshot.id, restored)
    advance(uow, op)


def _begin_attach(uow: UnitOfWork, volume: Volume, vm: VirtualMachine) -> None:
    require(volume.kind == "data", "only data volumes are attached", field="volume_id")
    require(vm.zone_id == volume.zone_id, "vm is in another zone", field="vm_id")
    require(vm.account == volume.account, "vm belongs to another account", field="vm_id")
    if volume.attached:
        raise Conflict(f"volume {volume.id} is attached to vm {volume.vm_id}", field="volume_id")
    if vm.pool_id is None:
        raise Conflict(f"vm {vm.id} has no disks yet", field="vm_id")
    home = uow.get(StoragePool, vm.pool_id)
    if volume.state == "Allocated":
        # Created where the VM's root disk lives: reachable wherever it runs.
        home.reserve(volume.id, volume.size_bytes)
        volume.create_requested(home.id, vm.host_id or vm.last_host_id)
        return
    volume.require_state(["Ready"], "attach")
    assert volume.pool_id is not None  # Ready volumes were created on a pool
    pool = uow.get(StoragePool, volume.pool_id)
    if pool.cluster_id is not None and pool.cluster_id != home.cluster_id:
        raise Validation(
            f"volume {volume.id} is on pool {pool.id} in cluster {pool.cluster_id};"
            f" vm {vm.id} runs in cluster {home.cluster_id}",
            field="volume_id",
        )


def advance(uow: UnitOfWork, op: Operation) -> None:
    """Do what the current state calls for, once (idempotent)."""
    if op.finished:
        return
    volume = uow.get(Volume, op.resource_id)
    kind, step = op.kind, op.current_step
    if kind == "volume.attach" and step == "create":
        if volume.state == "Error":
            deploy.release_space(uow, volume)
            _compensated(uow, op, volume.last_error or "the volume could not be created")
        elif volume.state == "Ready":
            op.complete_step("create")
            advance(uow, op)
    elif kind == "volume.attach" and step == "attach":
        vm = vm_of(uow, op)
        if vm is None:
            _failed(uow, op, "the VM is gone")
            return
        device = vm.free_device()
        volume.attach(vm.id, device)
        vm.disk_attached(volume.id, device)
        _done(uow, op, "attach")
    elif kind == "volume.detach":
        _done(uow, op, "detach")
    elif kind == "volume.resize":
        if volume.state == "Resizing":
            return
        if volume.state == "Error":
            # The file kept its size: the growth reserved on the pool goes back.
            _reserve_recorded_size(uow, volume)
            _compensated(uow, op, volume.last_error or "the resize failed")
        else:
            _done(uow, op, "resize")
    elif kind == "volume.snapshot":
        assert op.params.target_id is not None
        snapshot = uow.get(Snapshot, op.params.target_id)
        if snapshot.state == "Error":
            _failed(uow, op, snapshot.last_error or "the snapshot failed")
        elif snapshot.state != "Creating":
            _done(uow, op, "snapshot")
    elif kind == "volume.revert":
        if volume.reverting_to is not None:
            return
        if volume.state == "Error":
            _failed(uow, op, volume.last_error or "the revert failed")
        else:
            # Less after a revert to a snapshot taken before a resize.
            _reserve_recorded_size(uow, volume)
            _done(uow, op, "revert")


def fail(uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool = False) -> None:
    """Fail from outside: a step got no answer in time. The effector's work
    is abandoned by failing what waits for it (a late result is refused)."""
    if op.status not in ("pending", "running"):
        return
    volume = uow.get(Volume, op.resource_id)
    if timed_out and (volume.state in ("Creating", "Resizing") or volume.reverting_to):
        volume.fail(reason)
        advance(uow, op)
        return
    if timed_out and op.kind == "volume.snapshot" and op.params.target_id is not None:
        snapshot = uow.get(Snapshot, op.params.target_id)
        if snapshot.state == "Creating":
            snapshot.fail(reason)
    _failed(uow, op, reason)


def _reserve_recorded_size(uow: UnitOfWork, volume: Volume) -> None:
    """The pool reserves what the volume's record says it is, if it holds it."""
    if volume.pool_id is None:
        return
    pool = uow.get(StoragePool, volume.pool_id)
    if volume.id in pool.reservations:
        pool.resize_reservation(volume.id, volume.size_bytes)


def _release_guards(uow: UnitOfWork, op: Operation) -> None:
    guard.release(uow, op.resource_id, op.id)
    for other in (op.params.vm_id, op.params.target_id):
        if other is not None:
            guard.release(uow, other, op.id)


def _done(uow: UnitOfWork, op: Operation, step: str) -> None:
    op.complete_step(step)
    if op.finished:
        _release_guards(uow, op)


def _failed(uow: UnitOfWork, op: Operation, reason: str) -> None:
    op.fail(reason, compensate=False)
    _release_guards(uow, op)


def _compensated(uow: UnitOfWork, op: Operation, reason: str) -> None:
    """Failed, and what earlier steps held (pool space) already given back."""
    op.fail(reason, compensate=True)
    op.compensated()
    _release_guards(uow, op)
