"""Commands on physical networks and the VLAN/VXLAN tags they hand out.

A physical network is created in an existing zone (NotFound otherwise).
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.constraints import Name, Positive
from cloud_engine.engine.commands.switches import handles_switch
from cloud_engine.engine.fabric.physical_network import Isolation, PhysicalNetwork, TagRange
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.unit_of_work import UnitOfWork


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


enable_physical_network, disable_physical_network = handles_switch(
    EnablePhysicalNetwork, DisablePhysicalNetwork, PhysicalNetwork
)


@handles(AllocateTag)
def allocate_tag(uow: UnitOfWork, cmd: AllocateTag) -> Outcome:
    tag = uow.get(PhysicalNetwork, cmd.physical_network_id).allocate_tag(cmd.owner_id)
    return Outcome(aggregate_id=cmd.physical_network_id, value=tag)


@handles(ReleaseTag)
def release_tag(uow: UnitOfWork, cmd: ReleaseTag) -> Outcome:
    uow.get(PhysicalNetwork, cmd.physical_network_id).release_tag(cmd.tag, cmd.owner_id)
    return Outcome(aggregate_id=cmd.physical_network_id)
