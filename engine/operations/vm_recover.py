"""vm.recover: done at once, in the creating transaction: Destroyed ->
Stopped."""

from __future__ import annotations

from engine.operations.kind import Request
from engine.operations.operation import Operation
from engine.operations.vm_kind import VmKind, done
from engine.unit_of_work import UnitOfWork
from engine.virtual.vm import VirtualMachine


class VmRecover(VmKind):
    name = "vm.recover"
    steps = ("recover",)

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.recover()
        done(uow, op, "recover")

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        """Nothing: it finished when it began."""
