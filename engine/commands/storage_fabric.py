"""Commands on primary storage pools and image stores.

Both are created in an existing zone (NotFound otherwise); a pool that names a
cluster needs that cluster to exist and be in the same zone (Validation
otherwise), and a host-scoped pool a host of that zone (its cluster is the
host's). Volumes reserve bytes on the pool itself; see
engine.fabric.storage_pool. Not to be confused with engine.commands.storage,
which handles volumes, templates and snapshots.
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.constraints import Name, Overcommit, Positive, Tag
from cloud_engine.engine.commands.switches import handles_switch
from cloud_engine.engine.fabric.cluster import Cluster
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.image_store import ImageStore, ImageStoreProtocol
from cloud_engine.engine.fabric.storage_pool import StoragePool, StorageScope
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.unit_of_work import UnitOfWork


class CreateStoragePool(Command, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    scope: StorageScope
    capacity_bytes: Positive
    url: str
    cluster_id: UUID | None = None
    tags: tuple[Tag, ...] = ()
    overcommit: Overcommit = 1.0
    # Scope "host": the host whose local storage it is.
    host_id: UUID | None = None
    id: UUID | None = None


class EnableStoragePool(Command, frozen=True, kw_only=True):
    pool_id: UUID


class DisableStoragePool(Command, frozen=True, kw_only=True):
    pool_id: UUID


class EnterStoragePoolMaintenance(Command, frozen=True, kw_only=True):
    pool_id: UUID


class ExitStoragePoolMaintenance(Command, frozen=True, kw_only=True):
    pool_id: UUID


class ReserveStorage(Command, frozen=True, kw_only=True):
    pool_id: UUID
    volume_id: UUID
    size_bytes: Positive


class ReleaseStorage(Command, frozen=True, kw_only=True):
    pool_id: UUID
    volume_id: UUID


class CreateImageStore(Command, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    url: str
    protocol: ImageStoreProtocol
    id: UUID | None = None


class EnableImageStore(Command, frozen=True, kw_only=True):
    image_store_id: UUID


class DisableImageStore(Command, frozen=True, kw_only=True):
    image_store_id: UUID


@handles(CreateStoragePool)
def create_storage_pool(uow: UnitOfWork, cmd: CreateStoragePool) -> Outcome:
    uow.get(Zone, cmd.zone_id)
    cluster_id = cmd.cluster_id
    if cmd.host_id is not None:
        host = uow.get(Host, cmd.host_id)
        require(
            host.zone_id == cmd.zone_id,
            f"host {host.id} is not in zone {cmd.zone_id}",
            field="host_id",
        )
        require(
            cluster_id in (None, host.cluster_id),
            f"host {host.id} is not in cluster {cluster_id}",
            field="cluster_id",
        )
        cluster_id = host.cluster_id
    elif cluster_id is not None:
        cluster = uow.get(Cluster, cluster_id)
        require(
            cluster.zone_id == cmd.zone_id,
            f"cluster {cluster.id} is not in zone {cmd.zone_id}",
            field="cluster_id",
        )
    pool = StoragePool.create(
        zone_id=cmd.zone_id,
        cluster_id=cluster_id,
        name=cmd.name,
        scope=cmd.scope,
        capacity_bytes=cmd.capacity_bytes,
        url=cmd.url,
        tags=cmd.tags,
        overcommit=cmd.overcommit,
        host_id=cmd.host_id,
        id=cmd.id,
    )
    uow.add(pool)
    return Outcome(aggregate_id=pool.id)


enable_storage_pool, disable_storage_pool = handles_switch(
    EnableStoragePool, DisableStoragePool, StoragePool
)


@handles(EnterStoragePoolMaintenance)
def enter_storage_pool_maintenance(uow: UnitOfWork, cmd: EnterStoragePoolMaintenance) -> Outcome:
    uow.get(StoragePool, cmd.pool_id).enter_maintenance()
    return Outcome(aggregate_id=cmd.pool_id)


@handles(ExitStoragePoolMaintenance)
def exit_storage_pool_maintenance(uow: UnitOfWork, cmd: ExitStoragePoolMaintenance) -> Outcome:
    uow.get(StoragePool, cmd.pool_id).exit_maintenance()
    return Outcome(aggregate_id=cmd.pool_id)


@handles(ReserveStorage)
def reserve_storage(uow: UnitOfWork, cmd: ReserveStorage) -> Outcome:
    uow.get(StoragePool, cmd.pool_id).reserve(cmd.volume_id, cmd.size_bytes)
    return Outcome(aggregate_id=cmd.pool_id)


@handles(ReleaseStorage)
def release_storage(uow: UnitOfWork, cmd: ReleaseStorage) -> Outcome:
    uow.get(StoragePool, cmd.pool_id).release(cmd.volume_id)
    return Outcome(aggregate_id=cmd.pool_id)


@handles(CreateImageStore)
def create_image_store(uow: UnitOfWork, cmd: CreateImageStore) -> Outcome:
    uow.get(Zone, cmd.zone_id)
    store = ImageStore.create(
        zone_id=cmd.zone_id, name=cmd.name, url=cmd.url, protocol=cmd.protocol, id=cmd.id
    )
    uow.add(store)
    return Outcome(aggregate_id=store.id)


enable_image_store, disable_image_store = handles_switch(
    EnableImageStore, DisableImageStore, ImageStore
)
