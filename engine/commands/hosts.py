"""Commands on hosts: registration, lifecycle, capacity and overcommit.

A host is registered in an existing cluster (NotFound otherwise) whose pod and
zone must be the ones the command names (Validation otherwise). Capacity is
reserved per VM on the host itself; see engine.fabric.host.
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.constraints import Name, Overcommit, Positive, Tag
from cloud_engine.engine.commands.switches import handles_switch
from cloud_engine.engine.fabric.cluster import Cluster
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.unit_of_work import UnitOfWork


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
    # Where other hosts reach it (live migration, VXLAN), and on which device.
    underlay_address: str | None = None
    underlay_device: str | None = None
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
        underlay_address=cmd.underlay_address,
        underlay_device=cmd.underlay_device,
        id=cmd.id,
    )
    uow.add(host)
    return Outcome(aggregate_id=host.id)


enable_host, disable_host = handles_switch(EnableHost, DisableHost, Host)


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
