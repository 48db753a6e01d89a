"""vm.reboot: reboot (the effector's reboot recorded on the VM)."""

from __future__ import annotations

from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.vm_kind import VmKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmReboot(VmKind):
    name = "vm.reboot"
    steps = ("reboot",)

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.reboot()

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        if vm.reboot_pending:
            return
        if vm.reboot_error is not None:
            failed(uow, op, vm.reboot_error)
        else:
            done(uow, op, "reboot")
