"""Commands on storage aggregates: volumes, templates and snapshots.

Handlers check the aggregates a command refers to when they live in
engine.virtual (VMs, templates, snapshots) and the zone; storage pools belong to
the fabric and are checked by the flows that choose them.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.compute import Name, Reason
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.lookups import load_ref, require_enabled_zone, require_new_id
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.snapshot import REVERTIBLE, Snapshot, SnapshotKind
from cloud_engine.engine.virtual.template import Template, TemplateFormat
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume, VolumeKind

Size = Annotated[int, msgspec.Meta(gt=0)]

# VM states in which a disk may be plugged in: a root disk only while the VM is
# not running, a data disk also hot-plugged into a running VM.
ROOT_ATTACHABLE = ("Allocated", "Stopped")
DATA_ATTACHABLE = ("Allocated", "Stopped", "Running")
VM_GONE = ("Expunging", "Expunged")


class CreateVolume(Command, frozen=True, kw_only=True):
    id: UUID | None = None
    account: Name
    name: Name
    zone_id: UUID
    size_bytes: Size
    kind: VolumeKind = "data"
    template_id: UUID | None = None


class RequestVolumeCreation(Command, frozen=True, kw_only=True):
    volume_id: UUID
    pool_id: UUID
    host_id: UUID | None = None


class MarkVolumeCreated(Command, frozen=True, kw_only=True):
    volume_id: UUID


class AttachVolume(Command, frozen=True, kw_only=True):
    volume_id: UUID
    vm_id: UUID
    device_id: Annotated[int, msgspec.Meta(ge=0)]


class DetachVolume(Command, frozen=True, kw_only=True):
    volume_id: UUID


class RequestVolumeResize(Command, frozen=True, kw_only=True):
    volume_id: UUID
    new_size_bytes: Size


class MarkVolumeResized(Command, frozen=True, kw_only=True):
    volume_id: UUID


class RequestVolumeRevert(Command, frozen=True, kw_only=True):
    volume_id: UUID
    snapshot_id: UUID


class MarkVolumeReverted(Command, frozen=True, kw_only=True):
    volume_id: UUID


class DestroyVolume(Command, frozen=True, kw_only=True):
    volume_id: UUID


class FailVolume(Command, frozen=True, kw_only=True):
    volume_id: UUID
    reason: Reason


class MarkVolumeMoved(Command, frozen=True, kw_only=True):
    """The effector copied the volume to the pool its migration asked for."""

    volume_id: UUID


class FailVolumeMove(Command, frozen=True, kw_only=True):
    """The effector could not: it stays where it was."""

    volume_id: UUID
    reason: Reason


class RegisterTemplate(Command, frozen=True, kw_only=True):
    id: UUID | None = None
    name: Name
    zone_id: UUID
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    format: TemplateFormat
    size_bytes: Size
    os_type: Name
    checksum: Name | None = None
    bootable: bool = True  # an ISO a VM may boot from (disk images always are)


class RequestTemplateDownload(Command, frozen=True, kw_only=True):
    template_id: UUID


class MarkTemplateDownloaded(Command, frozen=True, kw_only=True):
    template_id: UUID


class FailTemplate(Command, frozen=True, kw_only=True):
    template_id: UUID
    reason: Reason


class DeactivateTemplate(Command, frozen=True, kw_only=True):
    template_id: UUID


class ReactivateTemplate(Command, frozen=True, kw_only=True):
    template_id: UUID


class CreateSnapshot(Command, frozen=True, kw_only=True):
    id: UUID | None = None
    volume_id: UUID
    name: Name
    kind: SnapshotKind = "internal"


class MarkSnapshotCreated(Command, frozen=True, kw_only=True):
    snapshot_id: UUID


class MarkSnapshotBackedUp(Command, frozen=True, kw_only=True):
    published = False  # no sender yet: not in the contract (Command.published)
    snapshot_id: UUID


class FailSnapshot(Command, frozen=True, kw_only=True):
    snapshot_id: UUID
    reason: Reason


class DestroySnapshot(Command, frozen=True, kw_only=True):
    snapshot_id: UUID


@handles(CreateVolume)
def create_volume(uow: UnitOfWork, cmd: CreateVolume) -> Outcome:
    require_new_id(uow, cmd.id)
    require_enabled_zone(uow, cmd.zone_id)
    if cmd.template_id is not None:
        template = load_ref(uow, Template, cmd.template_id, "template_id")
        template.require_state(["Ready"], "create a volume from")
        require(
            template.format != "iso",
            f"template {template.id} is an ISO: attach it to a VM instead",
            field="template_id",
        )
        require(template.zone_id == cmd.zone_id, "template is in another zone", field="template_id")
        require(
            cmd.size_bytes >= template.size_bytes,
            f"volume is smaller than the template ({template.size_bytes} bytes)",
            field="size_bytes",
        )
    volume = Volume.create(
        cmd.account, cmd.name, cmd.zone_id, cmd.size_bytes, cmd.kind, cmd.template_id, id=cmd.id
    )
    uow.add(volume)
    return Outcome(aggregate_id=volume.id)


@handles(RequestVolumeCreation)
def request_volume_creation(uow: UnitOfWork, cmd: RequestVolumeCreation) -> Outcome:
    uow.get(Volume, cmd.volume_id).create_requested(cmd.pool_id, cmd.host_id)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(MarkVolumeCreated)
def mark_volume_created(uow: UnitOfWork, cmd: MarkVolumeCreated) -> Outcome:
    uow.get(Volume, cmd.volume_id).created()
    return Outcome(aggregate_id=cmd.volume_id)


@handles(AttachVolume)
def attach_volume(uow: UnitOfWork, cmd: AttachVolume) -> Outcome:
    volume = uow.get(Volume, cmd.volume_id)
    vm = load_ref(uow, VirtualMachine, cmd.vm_id, "vm_id")
    require(vm.zone_id == volume.zone_id, "vm is in another zone", field="vm_id")
    require(vm.account == volume.account, "vm belongs to another account", field="vm_id")
    vm.require_state(
        ROOT_ATTACHABLE if volume.kind == "root" else DATA_ATTACHABLE, "attach a volume to"
    )
    volume.attach(cmd.vm_id, cmd.device_id)
    vm.disk_attached(volume.id, cmd.device_id)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(DetachVolume)
def detach_volume(uow: UnitOfWork, cmd: DetachVolume) -> Outcome:
    volume = uow.get(Volume, cmd.volume_id)
    vm = uow.find(VirtualMachine, volume.vm_id) if volume.vm_id is not None else None
    volume.detach(vm_expunging=vm is None or vm.state in VM_GONE)
    if vm is not None:
        vm.disk_detached(volume.id)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(RequestVolumeResize)
def request_volume_resize(uow: UnitOfWork, cmd: RequestVolumeResize) -> Outcome:
    uow.get(Volume, cmd.volume_id).resize_requested(cmd.new_size_bytes)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(MarkVolumeResized)
def mark_volume_resized(uow: UnitOfWork, cmd: MarkVolumeResized) -> Outcome:
    uow.get(Volume, cmd.volume_id).resized()
    return Outcome(aggregate_id=cmd.volume_id)


@handles(RequestVolumeRevert)
def request_volume_revert(uow: UnitOfWork, cmd: RequestVolumeRevert) -> Outcome:
    volume = uow.get(Volume, cmd.volume_id)
    snapshot = load_ref(uow, Snapshot, cmd.snapshot_id, "snapshot_id")
    require(snapshot.volume_id == volume.id, "snapshot is of another volume", field="snapshot_id")
    snapshot.require_state(REVERTIBLE, "revert to")
    volume.revert_requested(snapshot.id)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(MarkVolumeReverted)
def mark_volume_reverted(uow: UnitOfWork, cmd: MarkVolumeReverted) -> Outcome:
    uow.get(Volume, cmd.volume_id).reverted()
    return Outcome(aggregate_id=cmd.volume_id)


@handles(DestroyVolume)
def destroy_volume(uow: UnitOfWork, cmd: DestroyVolume) -> Outcome:
    uow.get(Volume, cmd.volume_id).destroy()
    return Outcome(aggregate_id=cmd.volume_id)


@handles(FailVolume)
def fail_volume(uow: UnitOfWork, cmd: FailVolume) -> Outcome:
    uow.get(Volume, cmd.volume_id).fail(cmd.reason)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(MarkVolumeMoved)
def mark_volume_moved(uow: UnitOfWork, cmd: MarkVolumeMoved) -> Outcome:
    uow.get(Volume, cmd.volume_id).moved()
    return Outcome(aggregate_id=cmd.volume_id)


@handles(FailVolumeMove)
def fail_volume_move(uow: UnitOfWork, cmd: FailVolumeMove) -> Outcome:
    uow.get(Volume, cmd.volume_id).move_failed(cmd.reason)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(RegisterTemplate)
def register_template(uow: UnitOfWork, cmd: RegisterTemplate) -> Outcome:
    require_new_id(uow, cmd.id)
    load_ref(uow, Zone, cmd.zone_id, "zone_id")
    template = Template.create(
        cmd.name,
        cmd.zone_id,
        cmd.url,
        cmd.format,
        cmd.size_bytes,
        cmd.os_type,
        cmd.checksum,
        id=cmd.id,
        bootable=cmd.bootable,
    )
    uow.add(template)
    return Outcome(aggregate_id=template.id)


@handles(RequestTemplateDownload)
def request_template_download(uow: UnitOfWork, cmd: RequestTemplateDownload) -> Outcome:
    uow.get(Template, cmd.template_id).download_requested()
    return Outcome(aggregate_id=cmd.template_id)


@handles(MarkTemplateDownloaded)
def mark_template_downloaded(uow: UnitOfWork, cmd: MarkTemplateDownloaded) -> Outcome:
    uow.get(Template, cmd.template_id).downloaded()
    return Outcome(aggregate_id=cmd.template_id)


@handles(FailTemplate)
def fail_template(uow: UnitOfWork, cmd: FailTemplate) -> Outcome:
    uow.get(Template, cmd.template_id).fail(cmd.reason)
    return Outcome(aggregate_id=cmd.template_id)


@handles(DeactivateTemplate)
def deactivate_template(uow: UnitOfWork, cmd: DeactivateTemplate) -> Outcome:
    uow.get(Template, cmd.template_id).deactivate()
    return Outcome(aggregate_id=cmd.template_id)


@handles(ReactivateTemplate)
def reactivate_template(uow: UnitOfWork, cmd: ReactivateTemplate) -> Outcome:
    uow.get(Template, cmd.template_id).reactivate()
    return Outcome(aggregate_id=cmd.template_id)


@handles(CreateSnapshot)
def create_snapshot(uow: UnitOfWork, cmd: CreateSnapshot) -> Outcome:
    require_new_id(uow, cmd.id)
    load_ref(uow, Volume, cmd.volume_id, "volume_id").require_snapshot_source()
    snapshot = Snapshot.create(cmd.volume_id, cmd.name, cmd.kind, id=cmd.id)
    uow.add(snapshot)
    return Outcome(aggregate_id=snapshot.id)


@handles(MarkSnapshotCreated)
def mark_snapshot_created(uow: UnitOfWork, cmd: MarkSnapshotCreated) -> Outcome:
    uow.get(Snapshot, cmd.snapshot_id).created()
    return Outcome(aggregate_id=cmd.snapshot_id)


@handles(MarkSnapshotBackedUp)
def mark_snapshot_backed_up(uow: UnitOfWork, cmd: MarkSnapshotBackedUp) -> Outcome:
    uow.get(Snapshot, cmd.snapshot_id).backed_up()
    return Outcome(aggregate_id=cmd.snapshot_id)


@handles(FailSnapshot)
def fail_snapshot(uow: UnitOfWork, cmd: FailSnapshot) -> Outcome:
    uow.get(Snapshot, cmd.snapshot_id).fail(cmd.reason)
    return Outcome(aggregate_id=cmd.snapshot_id)


@handles(DestroySnapshot)
def destroy_snapshot(uow: UnitOfWork, cmd: DestroySnapshot) -> Outcome:
    uow.get(Snapshot, cmd.snapshot_id).destroy()
    return Outcome(aggregate_id=cmd.snapshot_id)
