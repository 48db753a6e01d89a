"""vm.destroy: done at once, in the creating transaction: Destroyed, its
host capacity released (the effector stops the domain). Recoverable
(vm.recover) until expunged."""

from __future__ import annotations

from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.release import release_host
from cloud_engine.engine.operations.vm_kind import VmKind, done
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmDestroy(VmKind):
    name = "vm.destroy"
    steps = ("destroy",)

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.destroy()
        release_host(uow, resource)
        done(uow, op, "destroy")

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        """Nothing: it finished when it began."""
