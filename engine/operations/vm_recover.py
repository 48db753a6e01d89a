"""vm.recover: done at once, in the creating transaction: Destroyed ->
Stopped."""

from __future__ import annotations

from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.vm_kind import VmKind, done
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


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
