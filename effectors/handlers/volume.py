"""Volume work: a qcow2 volume created (from a template's base image or
empty), resized, reverted to a snapshot or deleted in its pool, and a
snapshot taken (an internal qcow2 snapshot of its volume)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import UUID

import msgspec
import structlog

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.desired import HostView, PoolView, SnapshotView, VmView, VolumeView
from cloud_engine.effectors.handlers import template
from cloud_engine.effectors.handlers.base import Handler, Reads, shared
from cloud_engine.effectors.handlers.template import TemplateSource
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import Unsupported, pool_spec
from cloud_engine.effectors.storage.pools import StorageError, ensure_pool
from cloud_engine.effectors.storage.spec import Outcome, VolumeSpec
from cloud_engine.effectors.storage.volumes import StorageDriver

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

log = structlog.get_logger("effectors.handlers.volume")


class VolumePlan(msgspec.Struct, frozen=True):
    """A volume, its pool and the host the pool is on."""

    volume: VolumeView
    pool: PoolView
    host: HostView
    snapshot_id: UUID | None = None  # snapshot.create: the snapshot taken
    template: TemplateSource | None = None  # volume.create from a template

    @property
    def host_id(self) -> UUID:
        return self.host.id


# Plans ---------------------------------------------------------------------------


async def read_plan(reads: Reads, item: WorkItem) -> VolumePlan | None:
    return await _read_volume_plan(reads, item.aggregate_id, item.version)


async def read_creation_plan(reads: Reads, item: WorkItem) -> VolumePlan | None:
    """The volume's plan and, if it is made from a template, the template."""
    found = await read_plan(reads, item)
    template_id = None if found is None else found.volume.template_id
    if found is None or template_id is None:
        return found
    return msgspec.structs.replace(found, template=await template.source(reads, template_id, 0))


async def read_snapshot_plan(reads: Reads, item: WorkItem) -> VolumePlan | None:
    """The snapshot's volume's plan (the volume as it is now)."""
    snapshot = await reads.models.get(SnapshotView, "snapshot", item.aggregate_id, item.version)
    if snapshot is None:
        return None
    return await _read_volume_plan(reads, snapshot.volume_id, 0, snapshot.id)


async def _read_volume_plan(
    reads: Reads, volume_id: UUID, at_least: int, snapshot_id: UUID | None = None
) -> VolumePlan | None:
    models = reads.models
    volume = await models.get(VolumeView, "volume", volume_id, at_least)
    if volume is None or not reads.serves(volume.zone_id) or volume.pool_id is None:
        return None
    pool = await models.get(PoolView, "storage_pool", volume.pool_id)
    host = None if pool is None else await _host(reads, volume, pool)
    if pool is None or host is None:
        log.warning("volume_work_unplaceable", volume_id=str(volume.id))
        return None
    return VolumePlan(volume=volume, pool=pool, host=host, snapshot_id=snapshot_id)


async def _host(reads: Reads, volume: VolumeView, pool: PoolView) -> HostView | None:
    # A host's local pool is on that host only. A shared pool is reached
    # through any of its hosts: the attached VM's host if there is one,
    # else the host named when its creation was asked, else the first
    # enabled host of the volume's zone.
    models = reads.models
    if pool.host_id is not None:
        return await models.get(HostView, "host", pool.host_id)
    if volume.vm_id is not None:
        vm = await models.get(VmView, "vm", volume.vm_id)
        if vm is not None and vm.host_id is not None:
            return await models.get(HostView, "host", vm.host_id)
    if volume.host_id is not None:
        return await models.get(HostView, "host", volume.host_id)
    return first_enabled(await models.hosts(frozenset({volume.zone_id})))


def first_enabled(hosts: Sequence[HostView]) -> HostView | None:
    enabled = sorted((h for h in hosts if h.state == "Enabled"), key=lambda h: str(h.id))
    return enabled[0] if enabled else None


# Acts ----------------------------------------------------------------------------


def _in_pool(executor: Executor, plan: VolumePlan) -> tuple[StorageDriver, str]:
    """The storage driver on the volume's host, its pool there made sure of."""
    storage = StorageDriver(executor.hypervisor(plan.host.libvirt_uri))
    spec = pool_spec(executor.names, plan.pool)
    with shared(storage.hv.uri, "pool", spec.name):
        ensure_pool(storage.hv, spec)
    return storage, spec.name


def _observed(outcome: Outcome) -> str:
    return "present" if outcome.volume.exists else "absent"


def create(executor: Executor, item: WorkItem, plan: VolumePlan) -> str:
    storage, pool = _in_pool(executor, plan)
    volume = plan.volume
    backing = None
    if volume.template_id is not None:
        if plan.template is None or plan.template.template.id != volume.template_id:
            raise Unsupported(f"volume {volume.id}: its template is not known")
        backing = _base_image(executor, storage, pool, plan.template, volume)
    spec = VolumeSpec(
        pool=pool,
        name=executor.names.volume(volume.id),
        size_bytes=volume.size_bytes,
        template_path=backing,
    )
    return _observed(storage.create(spec))


def resize(executor: Executor, item: WorkItem, plan: VolumePlan) -> str:
    storage, pool = _in_pool(executor, plan)
    size = plan.volume.resize_to or plan.volume.size_bytes
    return _observed(storage.resize(pool, executor.names.volume(plan.volume.id), size))


def delete(executor: Executor, item: WorkItem, plan: VolumePlan) -> str:
    storage, pool = _in_pool(executor, plan)
    return _observed(storage.delete(pool, executor.names.volume(plan.volume.id)))


def revert(executor: Executor, item: WorkItem, plan: VolumePlan) -> str:
    storage, pool = _in_pool(executor, plan)
    volume, names = plan.volume, executor.names
    if volume.reverting_to is None:
        raise Unsupported(f"volume {volume.id} is not being reverted")
    return _observed(
        storage.revert(pool, names.volume(volume.id), names.snapshot(volume.reverting_to))
    )


def snapshot(executor: Executor, item: WorkItem, plan: VolumePlan) -> str:
    storage, pool = _in_pool(executor, plan)
    names = executor.names
    if plan.snapshot_id is None:
        raise Unsupported("snapshot work without a snapshot")
    return _observed(
        storage.snapshot(pool, names.volume(plan.volume.id), names.snapshot(plan.snapshot_id))
    )


def _base_image(
    executor: Executor,
    storage: StorageDriver,
    pool: str,
    source: TemplateSource,
    volume: VolumeView,
) -> str:
    """The template's base image in the pool (copied there on first use),
    which the volume backs onto."""
    # Work items run concurrently: the base image is made once per pool,
    # whichever host reaches it (hosts share a cluster's pool).
    with shared("base", pool, str(source.template.id)):
        image = source.fetch()
        if volume.size_bytes < image.virtual_size:
            # The engine's recorded size must stay the disk's real size.
            raise Unsupported(
                f"volume {volume.id} of {volume.size_bytes} bytes is smaller than its"
                f" template's virtual size of {image.virtual_size} bytes"
            )
        base = storage.create(
            VolumeSpec(
                pool=pool,
                name=executor.names.template(source.template.id),
                size_bytes=image.virtual_size,
                template_path=image.path,
                clone="full",
            )
        )
    if base.volume.path is None:
        raise StorageError(f"base image of template {source.template.id} has no path")
    return base.volume.path


# What volume work reports as a failed result (with the message).
_ERRORS = (HypervisorError, Unsupported, StorageError, ValueError)

HANDLERS: dict[str, Handler[VolumePlan]] = {
    "volume.create": Handler(read_creation_plan, create, _ERRORS),
    "volume.resize": Handler(read_plan, resize, _ERRORS),
    "volume.delete": Handler(read_plan, delete, _ERRORS),
    "volume.revert": Handler(read_plan, revert, _ERRORS),
    "snapshot.create": Handler(read_snapshot_plan, snapshot, _ERRORS),
}
