"""What the VM lifecycle kinds share (vm.start, vm.stop, vm.reboot,
vm.destroy, vm.recover, vm.expunge, vm.migrate; one module each): the VM's
guard held while one runs, how one ends, how a timed-out one abandons the
effector's work, and how a start or a migration is placed.

One module per kind and the common part here, in base classes rather than
helpers each kind calls: the kinds differ only in a few lines each, and a
base class says in one place what a new lifecycle kind must fill in
(begin and advance_vm; fail_vm and the place hooks when it holds something).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from uuid import UUID

from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations import affinity, guard
from cloud_engine.engine.operations.kind import OperationKind, Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmKind(OperationKind[VirtualMachine]):
    """A lifecycle operation on an existing VM, which holds the VM's guard."""

    resource_type = "vm"

    def prepare(
        self, uow: UnitOfWork, resource: VirtualMachine, request: Request
    ) -> OperationParams:
        return OperationParams(forced=request.forced, host_id=request.host_id)

    def advance(self, uow: UnitOfWork, op: Operation) -> None:
        if op.finished:
            return
        self.advance_vm(uow, op, uow.get(VirtualMachine, op.resource_id))

    @abstractmethod
    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        """advance() on an unfinished operation, with its VM."""

    def fail(self, uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool) -> None:
        """No host fits, or a step got no answer in time. In the latter case
        the VM's pending change is failed too (a late effector result is then
        refused and the reconciler reports any drift). A start or stop
        that timed out leaves the VM unsettled: the hypervisor may have done
        it or not, so convergence records what it shows next."""
        if op.status not in ("pending", "running"):
            return
        vm = uow.get(VirtualMachine, op.resource_id)
        if timed_out and vm.state in ("Starting", "Stopping"):
            vm.timed_out(reason)
        if timed_out and vm.state == "Expunging":
            vm.expunge_failed(reason)
        self.fail_vm(uow, op, vm, reason, timed_out=timed_out)

    def fail_vm(
        self, uow: UnitOfWork, op: Operation, vm: VirtualMachine, reason: str, *, timed_out: bool
    ) -> None:
        """The rest of fail(): by default nothing is held, the operation ends
        failed. Only a placed start or migration holds something to give back."""
        failed(uow, op, reason)


class PlacedVmKind(VmKind):
    """A lifecycle kind whose first step places the VM on a host the
    engine's planner chose (start, migrate): capacity reserved there, the
    VM's affinity group told, the host recorded on the operation (what a
    failed migration gives back)."""

    placed = True
    keeps_disks = True

    def place(
        self, uow: UnitOfWork, op: Operation, host_id: UUID, pool_ids: Sequence[UUID]
    ) -> bool:
        if op.current_step != "place" or op.status not in ("pending", "running"):
            return False
        vm = uow.get(VirtualMachine, op.resource_id)
        host = uow.get(Host, host_id)
        host.require_state(["Enabled"], "place a VM on")
        self.before_reserve(op, vm, host_id)
        host.reserve(vm.id, vm.spec.cpus, vm.spec.ram_mb)
        if vm.affinity_group is not None:
            group = uow.find(
                affinity.AffinityGroup, affinity.group_id(vm.account, vm.affinity_group)
            )
            if group is not None:
                group.admit(vm.id, host_id)
        self.after_reserve(vm, host_id)
        op.choose_host(host_id)
        op.complete_step("place")
        return True

    def before_reserve(self, op: Operation, vm: VirtualMachine, host_id: UUID) -> None:
        """Checks and changes on the VM before the host's capacity is taken."""

    def after_reserve(self, vm: VirtualMachine, host_id: UUID) -> None:
        """Changes on the VM once the host's capacity is taken."""


def done(uow: UnitOfWork, op: Operation, step: str) -> None:
    """The step done; the guard given back when it was the last."""
    op.complete_step(step)
    if op.finished:
        guard.release(uow, op.resource_id, op.id)


def failed(uow: UnitOfWork, op: Operation, reason: str) -> None:
    """Failed with nothing to undo: the guard given back."""
    op.fail(reason, compensate=False)
    guard.release(uow, op.resource_id, op.id)
