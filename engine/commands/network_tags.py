"""Tags for isolated networks, handed out by their physical network.

One command changes both aggregates in one transaction: the PhysicalNetwork
records which network holds which tag, the Network records its tag. Two
networks asking at once either run one after the other in the writer or
conflict on the physical network's version and are retried, so a tag is never
given twice.
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.network import Network


class AllocateNetworkTag(Command, frozen=True, kw_only=True):
    network_id: UUID


class ReturnNetworkTag(Command, frozen=True, kw_only=True):
    network_id: UUID


def _physical_of(uow: UnitOfWork, network: Network) -> PhysicalNetwork:
    if network.physical_network_id is None:
        raise Validation(
            f"network {network.id} has no physical network to take a tag from",
            field="physical_network_id",
        )
    return uow.get(PhysicalNetwork, network.physical_network_id)


@handles(AllocateNetworkTag)
def allocate_network_tag(uow: UnitOfWork, cmd: AllocateNetworkTag) -> Outcome:
    network = uow.get(Network, cmd.network_id)
    physical = _physical_of(uow, network)
    # Every refusal of Network.assign_tag is checked before the physical
    # network hands out a tag, so a refused command changes neither.
    network.require_state(["Allocated", "Shutdown"], "assign a tag to")
    if network.isolation == "none":
        raise Conflict(
            f"network {network.id} has no isolation and takes no tag", field="network_id"
        )
    if network.tag is not None:
        raise Conflict(f"network {network.id} already holds tag {network.tag}", field="network_id")
    if physical.isolation != network.isolation:
        raise Validation(
            f"network {network.id} uses {network.isolation} but physical network "
            f"{physical.id} isolates with {physical.isolation}",
            field="network_id",
        )
    tag = physical.allocate_tag(network.id)
    network.assign_tag(tag)
    return Outcome(aggregate_id=network.id, value=tag)


@handles(ReturnNetworkTag)
def return_network_tag(uow: UnitOfWork, cmd: ReturnNetworkTag) -> Outcome:
    network = uow.get(Network, cmd.network_id)
    physical = _physical_of(uow, network)
    network.require_state(["Shutdown"], "release the tag of")
    tag = network.tag
    if tag is None or physical.tag_of(network.id) != tag:
        raise Conflict(f"network {network.id} holds no tag of {physical.id}", field="network_id")
    physical.release_tag(tag, network.id)
    network.release_tag()
    return Outcome(aggregate_id=network.id, value=tag)
