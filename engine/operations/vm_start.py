"""vm.start: place (the engine's planner, the last host preferred) -> start
(Running); a failed start gives back the capacity it reserved."""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.release import release_host
from cloud_engine.engine.operations.vm_kind import PlacedVmKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmStart(PlacedVmKind):
    name = "vm.start"
    steps = ("place", "start")

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.require_state(["Stopped"], "start")

    def after_reserve(self, vm: VirtualMachine, host_id: UUID) -> None:
        vm.start_requested(host_id)

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        if op.status == "compensating":
            # Only a failed start holds something: the capacity it reserved.
            release_host(uow, vm)
            op.compensated()
            guard.release(uow, vm.id, op.id)
        elif op.current_step == "start":
            if vm.state == "Running":
                done(uow, op, "start")
            elif vm.state == "Error":
                op.fail(vm.last_error or "the VM failed to start", compensate=True)
                self.advance(uow, op)

    def fail_vm(
        self, uow: UnitOfWork, op: Operation, vm: VirtualMachine, reason: str, *, timed_out: bool
    ) -> None:
        if op.done("place"):
            op.fail(reason, compensate=True)
            self.advance(uow, op)
        else:
            failed(uow, op, reason)
