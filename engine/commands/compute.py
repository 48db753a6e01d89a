"""Commands on compute aggregates: virtual machines.

Creation handlers check the aggregates a new VM refers to (zone, template);
hosts, pools and networks belong to other modules and are checked by the
flows that choose them.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.lookups import load_ref, require_enabled_zone, require_new_id
from cloud_engine.engine.operations import release
from cloud_engine.engine.operations.vm_migrate import settle_late
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.template import Template
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Reason = Annotated[str, msgspec.Meta(min_length=1)]

GIB = 1 << 30


class CreateVm(Command, frozen=True, kw_only=True):
    id: UUID | None = None
    account: Name
    name: Name
    zone_id: UUID
    template_id: UUID
    spec: VmSpec
    network_ids: tuple[UUID, ...] = ()
    affinity_group: Name | None = None
    user_data: str | None = None  # base64 (engine/virtual/guest_data.py)
    ssh_keys: tuple[str, ...] = ()


class PlaceVm(Command, frozen=True, kw_only=True):
    """Puts a VM on a host and pool WITHOUT reserving their capacity: for
    tests and benchmarks that set a VM up by hand. A deploy places through
    its operation (PlaceOperation), which reserves."""

    published = False  # for tests and benchmarks only (Command.published)

    vm_id: UUID
    host_id: UUID
    pool_id: UUID


class RequestVmStart(Command, frozen=True, kw_only=True):
    """Asks an effector to start a placed VM, outside any operation: for
    tests and benchmarks (clients start VMs with the vm.start operation)."""

    published = False  # for tests and benchmarks only (Command.published)

    vm_id: UUID
    host_id: UUID


class MarkVmRunning(Command, frozen=True, kw_only=True):
    vm_id: UUID


class RequestVmStop(Command, frozen=True, kw_only=True):
    vm_id: UUID
    forced: bool = False


class MarkVmStopped(Command, frozen=True, kw_only=True):
    vm_id: UUID


class RebootVm(Command, frozen=True, kw_only=True):
    vm_id: UUID


class RequestVmMigration(Command, frozen=True, kw_only=True):
    vm_id: UUID
    target_host_id: UUID


class CompleteVmMigration(Command, frozen=True, kw_only=True):
    vm_id: UUID


class FailVmMigration(Command, frozen=True, kw_only=True):
    vm_id: UUID
    reason: Reason


class DestroyVm(Command, frozen=True, kw_only=True):
    vm_id: UUID


class RecoverVm(Command, frozen=True, kw_only=True):
    vm_id: UUID


class RequestVmExpunge(Command, frozen=True, kw_only=True):
    vm_id: UUID


class MarkVmExpunged(Command, frozen=True, kw_only=True):
    vm_id: UUID


class FailVmExpunge(Command, frozen=True, kw_only=True):
    vm_id: UUID
    reason: Reason


class RecordVmDrift(Command, frozen=True, kw_only=True):
    vm_id: UUID
    observed: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    expected: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class FailVm(Command, frozen=True, kw_only=True):
    vm_id: UUID
    reason: Reason


class MarkVmRebooted(Command, frozen=True, kw_only=True):
    vm_id: UUID


class FailVmReboot(Command, frozen=True, kw_only=True):
    vm_id: UUID
    reason: Reason


class MarkVmMediaChanged(Command, frozen=True, kw_only=True):
    """The effector changed the VM's CD-ROM (or found nothing to change)."""

    vm_id: UUID


class FailVmMedia(Command, frozen=True, kw_only=True):
    vm_id: UUID
    reason: Reason


@handles(CreateVm)
def create_vm(uow: UnitOfWork, cmd: CreateVm) -> Outcome:
    require_new_id(uow, cmd.id)
    require_enabled_zone(uow, cmd.zone_id)
    template = load_ref(uow, Template, cmd.template_id, "template_id")
    template.require_state(["Ready"], "deploy from")
    require(template.zone_id == cmd.zone_id, "template is in another zone", field="template_id")
    if template.format == "iso":
        # Deployed from an ISO: an empty root disk, the ISO its CD-ROM.
        require(
            template.bootable,
            f"template {template.id} is an ISO that is not bootable",
            field="template_id",
        )
    else:
        require(
            cmd.spec.root_disk_gb * GIB >= template.size_bytes,
            f"root disk is smaller than the template ({template.size_bytes} bytes)",
            field="spec.root_disk_gb",
        )
    vm = VirtualMachine.create(
        cmd.account,
        cmd.name,
        cmd.zone_id,
        cmd.template_id,
        cmd.spec,
        cmd.network_ids,
        cmd.affinity_group,
        id=cmd.id,
        user_data=cmd.user_data,
        ssh_keys=cmd.ssh_keys,
        iso_id=template.id if template.format == "iso" else None,
    )
    uow.add(vm)
    return Outcome(aggregate_id=vm.id)


def _vm(uow: UnitOfWork, vm_id: UUID) -> VirtualMachine:
    return uow.get(VirtualMachine, vm_id)


@handles(PlaceVm)
def place_vm(uow: UnitOfWork, cmd: PlaceVm) -> Outcome:
    _vm(uow, cmd.vm_id).place(cmd.host_id, cmd.pool_id)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(RequestVmStart)
def request_vm_start(uow: UnitOfWork, cmd: RequestVmStart) -> Outcome:
    _vm(uow, cmd.vm_id).start_requested(cmd.host_id)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(MarkVmRunning)
def mark_vm_running(uow: UnitOfWork, cmd: MarkVmRunning) -> Outcome:
    _vm(uow, cmd.vm_id).mark_running()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(RequestVmStop)
def request_vm_stop(uow: UnitOfWork, cmd: RequestVmStop) -> Outcome:
    _vm(uow, cmd.vm_id).stop_requested(cmd.forced)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(MarkVmStopped)
def mark_vm_stopped(uow: UnitOfWork, cmd: MarkVmStopped) -> Outcome:
    _vm(uow, cmd.vm_id).mark_stopped()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(RebootVm)
def reboot_vm(uow: UnitOfWork, cmd: RebootVm) -> Outcome:
    _vm(uow, cmd.vm_id).reboot()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(RequestVmMigration)
def request_vm_migration(uow: UnitOfWork, cmd: RequestVmMigration) -> Outcome:
    _vm(uow, cmd.vm_id).migrate_requested(cmd.target_host_id)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(CompleteVmMigration)
def complete_vm_migration(uow: UnitOfWork, cmd: CompleteVmMigration) -> Outcome:
    vm = _vm(uow, cmd.vm_id)
    # After the step's deadline no operation holds it: the source is freed here.
    late, source = vm.is_unsettled_migration(), vm.last_host_id
    vm.migration_completed()
    if late:
        settle_late(uow, vm, free=source)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(FailVmMigration)
def fail_vm_migration(uow: UnitOfWork, cmd: FailVmMigration) -> Outcome:
    vm = _vm(uow, cmd.vm_id)
    late, target = vm.is_unsettled_migration(), vm.migration_target_id
    vm.migration_failed(cmd.reason)
    if late:
        settle_late(uow, vm, free=target)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(DestroyVm)
def destroy_vm(uow: UnitOfWork, cmd: DestroyVm) -> Outcome:
    _vm(uow, cmd.vm_id).destroy()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(RecoverVm)
def recover_vm(uow: UnitOfWork, cmd: RecoverVm) -> Outcome:
    _vm(uow, cmd.vm_id).recover()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(RequestVmExpunge)
def request_vm_expunge(uow: UnitOfWork, cmd: RequestVmExpunge) -> Outcome:
    _vm(uow, cmd.vm_id).expunge_requested()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(MarkVmExpunged)
def mark_vm_expunged(uow: UnitOfWork, cmd: MarkVmExpunged) -> Outcome:
    _vm(uow, cmd.vm_id).expunged()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(FailVmExpunge)
def fail_vm_expunge(uow: UnitOfWork, cmd: FailVmExpunge) -> Outcome:
    _vm(uow, cmd.vm_id).expunge_failed(cmd.reason)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(RecordVmDrift)
def record_vm_drift(uow: UnitOfWork, cmd: RecordVmDrift) -> Outcome:
    _vm(uow, cmd.vm_id).observe_drift(cmd.observed, cmd.expected)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(FailVm)
def fail_vm(uow: UnitOfWork, cmd: FailVm) -> Outcome:
    # Its host's capacity goes back with it, whichever operation (or none)
    # was waiting for the effector: nothing else would give it back.
    release.fail_vm(uow, _vm(uow, cmd.vm_id), cmd.reason)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(MarkVmRebooted)
def mark_vm_rebooted(uow: UnitOfWork, cmd: MarkVmRebooted) -> Outcome:
    _vm(uow, cmd.vm_id).reboot_completed()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(FailVmReboot)
def fail_vm_reboot(uow: UnitOfWork, cmd: FailVmReboot) -> Outcome:
    _vm(uow, cmd.vm_id).reboot_failed(cmd.reason)
    return Outcome(aggregate_id=cmd.vm_id)


@handles(MarkVmMediaChanged)
def mark_vm_media_changed(uow: UnitOfWork, cmd: MarkVmMediaChanged) -> Outcome:
    _vm(uow, cmd.vm_id).media_changed()
    return Outcome(aggregate_id=cmd.vm_id)


@handles(FailVmMedia)
def fail_vm_media(uow: UnitOfWork, cmd: FailVmMedia) -> Outcome:
    _vm(uow, cmd.vm_id).media_change_failed(cmd.reason)
    return Outcome(aggregate_id=cmd.vm_id)
