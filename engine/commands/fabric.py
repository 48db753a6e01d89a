"""Commands on the fabric aggregates.

Creation handlers load the parent aggregates first: a pod needs its zone, a
cluster its pod, a host its cluster, and the ids a command names must agree with
each other (Validation otherwise), so the fabric tree never points nowhere.
The Meta constraints reject bad input at decode time; the aggregates check again
because they can also be driven without a decoded command.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from engine.aggregate import require
from engine.commands.base import Command, Outcome, handles
from engine.fabric.cluster import Cluster, Hypervisor
from engine.fabric.host import Host
from engine.fabric.image_store import ImageStore, ImageStoreProtocol
from engine.fabric.physical_network import Isolation, PhysicalNetwork, TagRange
from engine.fabric.pod import Pod
from engine.fabric.storage_pool import StoragePool, StorageScope
from engine.fabric.zone import NetworkType, Zone
from engine.unit_of_work import UnitOfWork

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Overcommit = Annotated[float, msgspec.Meta(ge=1.0)]


# Zones -------------------------------------------------------------------------


class CreateZone(Command, frozen=True, kw_only=True):
    name: Name
    description: str = ""
    network_type: NetworkType = "Advanced"
    id: UUID | None = None


class EnableZone(Command, frozen=True, kw_only=True):
    zone_id: UUID


class DisableZone(Command, frozen=True, kw_only=True):
    zone_id: UUID


@handles(CreateZone)
def create_zone(uow: UnitOfWork, cmd: CreateZone) -> Outcome:
    zone = Zone.create(cmd.name, cmd.description, cmd.network_type, id=cmd.id)
    uow.add(zone)
    return Outcome(aggregate_id=zone.id)


@handles(EnableZone)
def enable_zone(uow: UnitOfWork, cmd: EnableZone) -> Outcome:
    uow.get(Zone, cmd.zone_id).enable()
    return Outcome(aggregate_id=cmd.zone_id)


@handles(DisableZone)
def disable_zone(uow: UnitOfWork, cmd: DisableZone) -> Outcome:
    uow.get(Zone, cmd.zone_id).disable()
    return Outcome(aggregate_id=cmd.zone_id)


# Pods and clusters -------------------------------------------------------------


class CreatePod(Command, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    gateway: str
    cidr: str
    id: UUID | None = None


class EnablePod(Command, frozen=True, kw_only=True):
    pod_id: UUID


class DisablePod(Command, frozen=True, kw_only=True):
    pod_id: UUID


class CreateCluster(Command, frozen=True, kw_only=True):
    zone_id: UUID
    pod_id: UUID
    name: Name
    hypervisor: Hypervisor = "kvm"
    id: UUID | None = None


class EnableCluster(Command, frozen=True, kw_only=True):
    cluster_id: UUID


class DisableCluster(Command, frozen=True, kw_only=True):
    cluster_id: UUID


@handles(CreatePod)
def create_pod(uow: UnitOfWork, cmd: CreatePod) -> Outcome:
    uow.get(Zone, cmd.zone_id)
    pod = Pod.create(
        zone_id=cmd.zone_id, name=cmd.name, gateway=cmd.gateway, cidr=cmd.cidr, id=cmd.id
    )
    uow.add(pod)
    return Outcome(aggregate_id=pod.id)


@handles(EnablePod)
def enable_pod(uow: UnitOfWork, cmd: EnablePod) -> Outcome:
    uow.get(Pod, cmd.pod_id).enable()
    return Outcome(aggregate_id=cmd.pod_id)


@handles(DisablePod)
def disable_pod(uow: UnitOfWork, cmd: DisablePod) -> Outcome:
    uow.get(Pod, cmd.pod_id).disable()
    return Outcome(aggregate_id=cmd.pod_id)


@handles(CreateCluster)
def create_cluster(uow: UnitOfWork, cmd: CreateCluster) -> Outcome:
    uow.get(Zone, cmd.zone_id)
    pod = uow.get(Pod, cmd.pod_id)
    require(
        pod.zone_id == cmd.zone_id, f"pod {pod.id} is not in zone {cmd.zone_id}", field="pod_id"
    )
    cluster = Cluster.create(
        zone_id=cmd.zone_id, pod_id=cmd.pod_id, name=cmd.name, hypervisor=cmd.hypervisor, id=cmd.id
    )
    uow.add(cluster)
    return Outcome(aggregate_id=cluster.id)


@handles(EnableCluster)
def enable_cluster(uow: UnitOfWork, cmd: EnableCluster) -> Outcome:
    uow.get(Cluster, cmd.cluster_id).enable()
    return Outcome(aggregate_id=cmd.cluster_id)


@handles(DisableCluster)
def disable_cluster(uow: UnitOfWork, cmd: DisableCluster) -> Outcome:
    uow.get(Cluster, cmd.cluster_id).disable()
    return Outcome(aggregate_id=cmd.cluster_id)


# Hosts -------------------------------------------------------------------------


class RegisterHost(Command, frozen=True, kw_only=True):
    zone_id: UUID
    pod_id: UUID
    cluster_id: UUID
    name: Name
    cpu_cores: Positive
    ram_mb: Positive
    libvirt_uri: str
    cpu_mhz: Positive | None = None
    cpu_overcommit: Overcommit = 1.0
    ram_overcommit: Overcommit = 1.0
    tags: tuple[Tag, ...] = ()
    id: UUID | None = None


class EnableHost(Command, frozen=True, kw_only=True):
    host_id: UUID


class DisableHost(Command, frozen=True, kw_only=True):
    host_id: UUID


class EnterHostMaintenance(Command, frozen=True, kw_only=True):
    host_id: UUID


class ExitHostMaintenance(Command, frozen=True, kw_only=True):
    host_id: UUID


class DeclareHostDown(Command, frozen=True, kw_only=True):
    host_id: UUID


class DeclareHostUp(Command, frozen=True, kw_only=True):
    host_id: UUID


class ReserveHostCapacity(Command, frozen=True, kw_only=True):
    host_id: UUID
    vm_id: UUID
    cpus: Positive
    ram_mb: Positive


class ReleaseHostCapacity(Command, frozen=True, kw_only=True):
    host_id: UUID
    vm_id: UUID


class UpdateHostOvercommit(Command, frozen=True, kw_only=True):
    host_id: UUID
    cpu_overcommit: Overcommit
    ram_overcommit: Overcommit


@handles(RegisterHost)
def register_host(uow: UnitOfWork, cmd: RegisterHost) -> Outcome:
    cluster = uow.get(Cluster, cmd.cluster_id)
    require(
        cluster.pod_id == cmd.pod_id,
        f"cluster {cluster.id} is not in pod {cmd.pod_id}",
        field="cluster_id",
    )
    require(
        cluster.zone_id == cmd.zone_id,
        f"cluster {cluster.id} is not in zone {cmd.zone_id}",
        field="cluster_id",
    )
    host = Host.create(
        zone_id=cmd.zone_id,
        pod_id=cmd.pod_id,
        cluster_id=cmd.cluster_id,
        name=cmd.name,
        cpu_cores=cmd.cpu_cores,
        cpu_mhz=cmd.cpu_mhz,
        ram_mb=cmd.ram_mb,
        cpu_overcommit=cmd.cpu_overcommit,
        ram_overcommit=cmd.ram_overcommit,
        tags=cmd.tags,
        libvirt_uri=cmd.libvirt_uri,
        id=cmd.id,
    )
    uow.add(host)
    return Outcome(aggregate_id=host.id)


@handles(EnableHost)
def enable_host(uow: UnitOfWork, cmd: EnableHost) -> Outcome:
    uow.get(Host, cmd.host_id).enable()
    return Outcome(aggregate_id=cmd.host_id)


@handles(DisableHost)
def disable_host(uow: UnitOfWork, cmd: DisableHost) -> Outcome:
    uow.get(Host, cmd.host_id).disable()
    return Outcome(aggregate_id=cmd.host_id)


@handles(EnterHostMaintenance)
def enter_host_maintenance(uow: UnitOfWork, cmd: EnterHostMaintenance) -> Outcome:
    uow.get(Host, cmd.host_id).enter_maintenance()
    return Outcome(aggregate_id=cmd.host_id)


@handles(ExitHostMaintenance)
def exit_host_maintenance(uow: UnitOfWork, cmd: ExitHostMaintenance) -> Outcome:
    uow.get(Host, cmd.host_id).exit_maintenance()
    return Outcome(aggregate_id=cmd.host_id)


@handles(DeclareHostDown)
def declare_host_down(uow: UnitOfWork, cmd: DeclareHostDown) -> Outcome:
    uow.get(Host, cmd.host_id).declare_down()
    return Outcome(aggregate_id=cmd.host_id)


@handles(DeclareHostUp)
def declare_host_up(uow: UnitOfWork, cmd: DeclareHostUp) -> Outcome:
    uow.get(Host, cmd.host_id).declare_up()
    return Outcome(aggregate_id=cmd.host_id)


@handles(ReserveHostCapacity)
def reserve_host_capacity(uow: UnitOfWork, cmd: ReserveHostCapacity) -> Outcome:
    uow.get(Host, cmd.host_id).reserve(cmd.vm_id, cmd.cpus, cmd.ram_mb)
    return Outcome(aggregate_id=cmd.host_id)


@handles(ReleaseHostCapacity)
def release_host_capacity(uow: UnitOfWork, cmd: ReleaseHostCapacity) -> Outcome:
    uow.get(Host, cmd.host_id).release(cmd.vm_id)
    return Outcome(aggregate_id=cmd.host_id)


@handles(UpdateHostOvercommit)
def update_host_overcommit(uow: UnitOfWork, cmd: UpdateHostOvercommit) -> Outcome:
    uow.get(Host, cmd.host_id).update_overcommit(cmd.cpu_overcommit, cmd.ram_overcommit)
    return Outcome(aggregate_id=cmd.host_id)


# Storage -----------------------------------------------------------------------


class CreateStoragePool(Command, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    scope: StorageScope
    capacity_bytes: Positive
    url: str
    cluster_id: UUID | None = None
    tags: tuple[Tag, ...] = ()
    overcommit: Overcommit = 1.0
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
    if cmd.cluster_id is not None:
        cluster = uow.get(Cluster, cmd.cluster_id)
        require(
            cluster.zone_id == cmd.zone_id,
            f"cluster {cluster.id} is not in zone {cmd.zone_id}",
            field="cluster_id",
        )
    pool = StoragePool.create(
        zone_id=cmd.zone_id,
        cluster_id=cmd.cluster_id,
        name=cmd.name,
        scope=cmd.scope,
        capacity_bytes=cmd.capacity_bytes,
        url=cmd.url,
        tags=cmd.tags,
        overcommit=cmd.overcommit,
        id=cmd.id,
    )
    uow.add(pool)
    return Outcome(aggregate_id=pool.id)


@handles(EnableStoragePool)
def enable_storage_pool(uow: UnitOfWork, cmd: EnableStoragePool) -> Outcome:
    uow.get(StoragePool, cmd.pool_id).enable()
    return Outcome(aggregate_id=cmd.pool_id)


@handles(DisableStoragePool)
def disable_storage_pool(uow: UnitOfWork, cmd: DisableStoragePool) -> Outcome:
    uow.get(StoragePool, cmd.pool_id).disable()
    return Outcome(aggregate_id=cmd.pool_id)


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


@handles(EnableImageStore)
def enable_image_store(uow: UnitOfWork, cmd: EnableImageStore) -> Outcome:
    uow.get(ImageStore, cmd.image_store_id).enable()
    return Outcome(aggregate_id=cmd.image_store_id)


@handles(DisableImageStore)
def disable_image_store(uow: UnitOfWork, cmd: DisableImageStore) -> Outcome:
    uow.get(ImageStore, cmd.image_store_id).disable()
    return Outcome(aggregate_id=cmd.image_store_id)


# Physical networks -------------------------------------------------------------


class CreatePhysicalNetwork(Command, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    isolation: Isolation
    tag_range: TagRange | None = None
    id: UUID | None = None


class EnablePhysicalNetwork(Command, frozen=True, kw_only=True):
    physical_network_id: UUID


class DisablePhysicalNetwork(Command, frozen=True, kw_only=True):
    physical_network_id: UUID


class AllocateTag(Command, frozen=True, kw_only=True):
    physical_network_id: UUID
    owner_id: UUID


class ReleaseTag(Command, frozen=True, kw_only=True):
    physical_network_id: UUID
    tag: Positive
    owner_id: UUID


@handles(CreatePhysicalNetwork)
def create_physical_network(uow: UnitOfWork, cmd: CreatePhysicalNetwork) -> Outcome:
    uow.get(Zone, cmd.zone_id)
    network = PhysicalNetwork.create(
        zone_id=cmd.zone_id,
        name=cmd.name,
        isolation=cmd.isolation,
        tag_range=cmd.tag_range,
        id=cmd.id,
    )
    uow.add(network)
    return Outcome(aggregate_id=network.id)


@handles(EnablePhysicalNetwork)
def enable_physical_network(uow: UnitOfWork, cmd: EnablePhysicalNetwork) -> Outcome:
    uow.get(PhysicalNetwork, cmd.physical_network_id).enable()
    return Outcome(aggregate_id=cmd.physical_network_id)


@handles(DisablePhysicalNetwork)
def disable_physical_network(uow: UnitOfWork, cmd: DisablePhysicalNetwork) -> Outcome:
    uow.get(PhysicalNetwork, cmd.physical_network_id).disable()
    return Outcome(aggregate_id=cmd.physical_network_id)


@handles(AllocateTag)
def allocate_tag(uow: UnitOfWork, cmd: AllocateTag) -> Outcome:
    tag = uow.get(PhysicalNetwork, cmd.physical_network_id).allocate_tag(cmd.owner_id)
    return Outcome(aggregate_id=cmd.physical_network_id, value=tag)


@handles(ReleaseTag)
def release_tag(uow: UnitOfWork, cmd: ReleaseTag) -> Outcome:
    uow.get(PhysicalNetwork, cmd.physical_network_id).release_tag(cmd.tag, cmd.owner_id)
    return Outcome(aggregate_id=cmd.physical_network_id)
