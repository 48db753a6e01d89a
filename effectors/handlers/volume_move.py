"""volume.move: a volume's file copied to the pool its migration asked for
(volume.migrate), offline: the engine has checked that no guest uses it.

The copy is written by the host the engine named (the target pool's own
host for a local pool, the VM's host for a shared one), else by an enabled
host of the target pool's cluster. When that host also reaches the source
pool (a shared one of its cluster, or its own local pool) the copy stays
inside its libvirtd (storage/motion.move_within); otherwise it streams
from the source pool's host (storage/motion.move_volume, as an offline VM
migration's disks). Either is observed first, so a redelivered move after
a crash finishes or reports what it finds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

import msgspec

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.desired import HostView, PoolView, VmView, VolumeView
from cloud_engine.effectors.handlers.base import Handler, Reads, shared
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import Unsupported, pool_spec
from cloud_engine.effectors.storage.motion import move_volume, move_within
from cloud_engine.effectors.storage.pools import StorageError, ensure_pool
from cloud_engine.effectors.storage.volumes import StorageDriver

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor


class MovePlan(msgspec.Struct, frozen=True):
    volume: VolumeView
    source: PoolView
    target: PoolView
    # None: no enabled host reaches that pool (the work fails with that).
    source_host: HostView | None
    target_host: HostView | None

    @property
    def host_id(self) -> UUID | None:
        return None if self.target_host is None else self.target_host.id


async def read_move_plan(reads: Reads, item: WorkItem) -> MovePlan | None:
    models = reads.models
    volume = await models.get(VolumeView, "volume", item.aggregate_id, item.version)
    if volume is None or not reads.serves(volume.zone_id):
        return None
    if volume.pool_id is None or volume.moving_to is None:
        return None  # redelivered after the engine settled it: nothing to do
    source = await models.get(PoolView, "storage_pool", volume.pool_id)
    target = await models.get(PoolView, "storage_pool", volume.moving_to)
    if source is None or target is None:
        return None
    hosts = await models.hosts(frozenset({volume.zone_id}))
    target_host = await _writer(reads, volume, target, hosts)
    source_host = None
    if target_host is not None and _reaches(target_host, source):
        source_host = target_host
    if source_host is None:
        source_host = await _reader(reads, volume, source, hosts)
    return MovePlan(volume, source, target, source_host, target_host)


def _reaches(host: HostView, pool: PoolView) -> bool:
    if pool.host_id is not None:
        return pool.host_id == host.id
    return pool.cluster_id in (None, host.cluster_id)


def _any_of(pool: PoolView, hosts: list[HostView]) -> HostView | None:
    fit = sorted(
        (h for h in hosts if h.state == "Enabled" and _reaches(h, pool)), key=lambda h: str(h.id)
    )
    return fit[0] if fit else None


async def _writer(
    reads: Reads, volume: VolumeView, target: PoolView, hosts: list[HostView]
) -> HostView | None:
    named = target.host_id or volume.moving_host_id
    if named is not None:
        return await reads.models.get(HostView, "host", named)
    return _any_of(target, hosts)


async def _reader(
    reads: Reads, volume: VolumeView, source: PoolView, hosts: list[HostView]
) -> HostView | None:
    if source.host_id is not None:
        return await reads.models.get(HostView, "host", source.host_id)
    if volume.vm_id is not None:
        vm = await reads.models.get(VmView, "vm", volume.vm_id)
        ran = None if vm is None else (vm.host_id or vm.last_host_id)
        if ran is not None:
            return await reads.models.get(HostView, "host", ran)
    return _any_of(source, hosts)


def move(executor: Executor, item: WorkItem, plan: MovePlan) -> str:
    names = executor.names
    for pool, host in ((plan.source, plan.source_host), (plan.target, plan.target_host)):
        if host is None:
            raise Unsupported(f"no enabled host reaches pool {pool.id}")
    assert plan.source_host is not None and plan.target_host is not None
    to_storage = StorageDriver(executor.hypervisor(plan.target_host.libvirt_uri))
    same = plan.source_host.libvirt_uri == plan.target_host.libvirt_uri
    from_storage = (
        to_storage if same else StorageDriver(executor.hypervisor(plan.source_host.libvirt_uri))
    )
    from_spec, to_spec = pool_spec(names, plan.source), pool_spec(names, plan.target)
    for storage, spec in ((from_storage, from_spec), (to_storage, to_spec)):
        with shared(storage.hv.uri, "pool", spec.name):
            ensure_pool(storage.hv, spec)
    name = names.volume(plan.volume.id)
    if same:
        outcome = move_within(to_storage, from_spec.name, name, to_spec.name)
    else:
        outcome = move_volume(from_storage, from_spec.name, name, to_storage, to_spec.name)
    executor.fault("after-volume-move")
    return "present" if outcome.volume.exists else "absent"


_ERRORS = (HypervisorError, Unsupported, StorageError, ValueError)

HANDLERS: dict[str, Handler[MovePlan]] = {
    "volume.move": Handler(read_move_plan, move, _ERRORS),
}
