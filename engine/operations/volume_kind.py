"""What the volume kinds share (volume.attach, volume.detach,
volume.resize, volume.snapshot, volume.revert; one module each): the guards
they hold, the idle-VM rule, how one ends and how a timed-out one abandons
the effector's work.

Each volume operation holds the volume's guard and, when the volume is (to
be) attached to a VM, that VM's guard too: a VM start cannot race a disk
being changed under it, nor two attaches pick one device.

The effectors change disks with qemu-img and libvirt storage calls on the
image file, which QEMU locks while its guest runs. So every volume operation
touching a VM's disk needs that VM stopped (or destroyed, or in Error), and
is refused at once with that reason otherwise, instead of failing half-way
on the host.

One module per kind and the common part here, as a base class, for the
reason given in engine/operations/vm_kind.py: the kinds differ in a few
lines, and the base says what a new one fills in (begin_volume and
advance_volume; prepare when it reads more of the request).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.kind import OperationKind, Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume

# The states of a VM whose disks are not in use.
VM_IDLE = ("Stopped", "Destroyed", "Error")


class VolumeKind(OperationKind[Volume]):
    resource_type = "volume"
    # The operation's target (the snapshot it makes) is guarded too, so the
    # engine finds the operation from the target's events.
    guards_target: ClassVar[bool] = False

    def prepare(self, uow: UnitOfWork, resource: Volume, request: Request) -> OperationParams:
        return OperationParams(
            vm_id=resource.vm_id, size_bytes=request.new_size_bytes, target_id=request.snapshot_id
        )

    def begin(self, uow: UnitOfWork, op: Operation, resource: Volume, request: Request) -> None:
        """The guards, the idle-VM rule, the kind's first action, then
        advance (a kind done at once finishes in this transaction)."""
        if op.params.vm_id is not None:
            guard.acquire(uow, op.params.vm_id, op.id, self.name)
        if self.guards_target and op.params.target_id is not None:
            guard.acquire(uow, op.params.target_id, op.id, self.name)
        vm = vm_of(uow, op)
        if vm is not None:
            require_idle(vm, self.name)
        self.begin_volume(uow, op, resource, vm, request)
        self.advance(uow, op)

    @abstractmethod
    def begin_volume(
        self,
        uow: UnitOfWork,
        op: Operation,
        volume: Volume,
        vm: VirtualMachine | None,
        request: Request,
    ) -> None:
        """The kind's first action; the guards are held, the VM (if any) idle."""

    def advance(self, uow: UnitOfWork, op: Operation) -> None:
        if op.finished:
            return
        self.advance_volume(uow, op, uow.get(Volume, op.resource_id))

    @abstractmethod
    def advance_volume(self, uow: UnitOfWork, op: Operation, volume: Volume) -> None:
        """advance() on an unfinished operation, with its volume."""

    def fail(self, uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool) -> None:
        """A step got no answer in time. The effector's work is abandoned by
        failing what waits for it (a late result is refused)."""
        if op.status not in ("pending", "running"):
            return
        volume = uow.get(Volume, op.resource_id)
        if timed_out and (volume.state in ("Creating", "Resizing") or volume.reverting_to):
            volume.fail(reason)
            self.advance(uow, op)
            return
        if timed_out:
            self.abandon(uow, op, reason)
        failed(uow, op, reason)

    def abandon(self, uow: UnitOfWork, op: Operation, reason: str) -> None:
        """What else waits for an effector, failed when a step timed out."""


def vm_of(uow: UnitOfWork, op: Operation) -> VirtualMachine | None:
    return None if op.params.vm_id is None else uow.find(VirtualMachine, op.params.vm_id)


def require_idle(vm: VirtualMachine, kind: str) -> None:
    if vm.state not in VM_IDLE:
        raise Conflict(
            f"{kind} refused: vm {vm.id} is {vm.state}; its volumes change only while it is"
            " stopped (QEMU holds the disk images of a running guest)",
            field="vm_id",
        )


def reserve_recorded_size(uow: UnitOfWork, volume: Volume) -> None:
    """The pool reserves what the volume's record says it is, if it holds it."""
    if volume.pool_id is None:
        return
    pool = uow.get(StoragePool, volume.pool_id)
    if volume.id in pool.reservations:
        pool.resize_reservation(volume.id, volume.size_bytes)


def release_guards(uow: UnitOfWork, op: Operation) -> None:
    """Every guard a volume operation may hold: its volume's, its VM's, its
    target's (releasing one it does not hold changes nothing)."""
    guard.release(uow, op.resource_id, op.id)
    for other in (op.params.vm_id, op.params.target_id):
        if other is not None:
            guard.release(uow, other, op.id)


def done(uow: UnitOfWork, op: Operation, step: str) -> None:
    op.complete_step(step)
    if op.finished:
        release_guards(uow, op)


def failed(uow: UnitOfWork, op: Operation, reason: str) -> None:
    op.fail(reason, compensate=False)
    release_guards(uow, op)


def compensated(uow: UnitOfWork, op: Operation, reason: str) -> None:
    """Failed, and what earlier steps held (pool space) already given back."""
    op.fail(reason, compensate=True)
    op.compensated()
    release_guards(uow, op)
