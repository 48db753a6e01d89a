"""vm.attach_iso and vm.detach_iso: media (an ISO template inserted in the
VM's CD-ROM drive, or the drive emptied).

A stopped VM's drive is its record: the step is done in the creating
transaction, and its next start defines the domain with it. A running
VM's drive is changed in place by the effector (libvirt's update-device,
work vm.iso_insert / vm.iso_eject): the step ends when its result is
recorded, failed with libvirt's reason (the drive keeping what it had) if
it could not.
"""

from __future__ import annotations

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.errors import Validation
from cloud_engine.engine.lookups import load_ref
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.vm_kind import VmKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.template import Template
from cloud_engine.engine.virtual.vm import VirtualMachine


class _MediaKind(VmKind):
    steps = ("media",)

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        if vm.media_pending:
            return
        if vm.media_error is not None:
            failed(uow, op, vm.media_error)
        else:
            done(uow, op, "media")

    def fail_vm(
        self, uow: UnitOfWork, op: Operation, vm: VirtualMachine, reason: str, *, timed_out: bool
    ) -> None:
        if timed_out and vm.media_pending:
            vm.media_change_failed(reason)
        failed(uow, op, reason)


class VmAttachIso(_MediaKind):
    name = "vm.attach_iso"

    def prepare(
        self, uow: UnitOfWork, resource: VirtualMachine, request: Request
    ) -> OperationParams:
        if request.iso_id is None:
            raise Validation(f"{self.name} needs iso_id", field="iso_id")
        iso = load_ref(uow, Template, request.iso_id, "iso_id")
        require(iso.format == "iso", f"template {iso.id} is not an ISO", field="iso_id")
        require(iso.zone_id == resource.zone_id, "the ISO is in another zone", field="iso_id")
        iso.require_state(["Ready"], "attach")
        return OperationParams(target_id=iso.id)

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        assert op.params.target_id is not None  # prepare recorded it
        resource.attach_iso(op.params.target_id)
        if not resource.media_pending:
            done(uow, op, "media")


class VmDetachIso(_MediaKind):
    name = "vm.detach_iso"

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.detach_iso()
        if not resource.media_pending:
            done(uow, op, "media")
