"""vm.expunge: expunge (the effector undefines the domain) -> the volumes
the deploy made destroyed, NICs and IPs released, volumes attached later
detached (they outlive the VM). If the domain cannot be removed, or no
answer comes in time, the VM goes back to Destroyed with the reason,
nothing released, and can be expunged again."""

from __future__ import annotations

from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.release import release_resources
from cloud_engine.engine.operations.vm_kind import VmKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmExpunge(VmKind):
    name = "vm.expunge"
    steps = ("expunge",)

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.expunge_requested()

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        if vm.state == "Expunged":
            release_resources(uow, vm)
            done(uow, op, "expunge")
        elif vm.state == "Destroyed":
            # The effector could not remove the domain: nothing was released,
            # the VM can be expunged again.
            failed(uow, op, vm.expunge_error or "the domain could not be removed")
