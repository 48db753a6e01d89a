"""vm.stop: stop (Stopped; its host capacity released). Forced powers the
domain off instead of asking the guest to shut down. A stop the effector
fails, or that gets no answer in time, leaves the VM in Error, off its
host, with the capacity given back as it fails (release.fail_vm)."""

from __future__ import annotations

from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.release import release_host
from cloud_engine.engine.operations.vm_kind import VmKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmStop(VmKind):
    name = "vm.stop"
    steps = ("stop",)

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.stop_requested(op.params.forced)

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        if vm.state == "Stopped":
            release_host(uow, vm)
            done(uow, op, "stop")
        elif vm.state == "Error":
            failed(uow, op, vm.last_error or "the VM failed to stop")
