"""Commands on zones, pods and clusters.

A pod needs its zone and a cluster its zone and pod (NotFound if one is
missing); the pod a cluster names must be in the zone it names (Validation
otherwise), so the fabric tree never points nowhere.
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.constraints import Name
from cloud_engine.engine.commands.switches import handles_switch
from cloud_engine.engine.fabric.cluster import Cluster, Hypervisor
from cloud_engine.engine.fabric.pod import Pod
from cloud_engine.engine.fabric.zone import NetworkType, Zone
from cloud_engine.engine.unit_of_work import UnitOfWork

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


enable_zone, disable_zone = handles_switch(EnableZone, DisableZone, Zone)


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


enable_pod, disable_pod = handles_switch(EnablePod, DisablePod, Pod)


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


enable_cluster, disable_cluster = handles_switch(EnableCluster, DisableCluster, Cluster)
