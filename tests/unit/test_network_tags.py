import uuid

import pytest

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.commands.fabric import CreatePhysicalNetwork, CreateZone
from cloud_engine.engine.commands.network import CreateNetwork, ShutdownNetwork
from cloud_engine.engine.commands.network_tags import AllocateNetworkTag, ReturnNetworkTag
from cloud_engine.engine.errors import Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork, TagRange
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.network import Network


@pytest.fixture
def world():
    uow = InMemoryUnitOfWork()
    zone = dispatch(uow, CreateZone(name="z")).aggregate_id
    physical = dispatch(
        uow,
        CreatePhysicalNetwork(
            zone_id=zone, name="p", isolation="VXLAN", tag_range=TagRange(first=100, last=101)
        ),
    ).aggregate_id
    uow.commit()
    return uow, zone, physical


def _network(uow, zone, physical, isolation="VXLAN", name="n"):
    return dispatch(
        uow,
        CreateNetwork(
            account="a",
            name=name,
            zone_id=zone,
            cidr="10.0.0.0/24",
            isolation=isolation,
            physical_network_id=physical,
        ),
    ).aggregate_id


def test_allocate_gives_lowest_tag_to_both_aggregates(world):
    uow, zone, physical = world
    first = _network(uow, zone, physical, name="a")
    second = _network(uow, zone, physical, name="b")
    assert dispatch(uow, AllocateNetworkTag(network_id=first)).value == 100
    assert dispatch(uow, AllocateNetworkTag(network_id=second)).value == 101
    assert uow.get(Network, first).tag == 100
    assert uow.get(Network, first).state == "Implemented"
    assert uow.get(PhysicalNetwork, physical).tag_of(second) == 101


def test_exhausted_range_refuses_and_changes_nothing(world):
    uow, zone, physical = world
    for name in ("a", "b"):
        dispatch(uow, AllocateNetworkTag(network_id=_network(uow, zone, physical, name=name)))
    third = _network(uow, zone, physical, name="c")
    uow.commit()
    with pytest.raises(Exception, match="tags") as info:
        dispatch(uow, AllocateNetworkTag(network_id=third))
    assert type(info.value).__name__ == "CapacityExceeded"
    assert uow.commit() == []


def test_second_allocation_for_same_network_is_conflict_without_events(world):
    uow, zone, physical = world
    network = _network(uow, zone, physical)
    dispatch(uow, AllocateNetworkTag(network_id=network))
    uow.commit()
    with pytest.raises(InvalidTransition):
        dispatch(uow, AllocateNetworkTag(network_id=network))
    assert uow.commit() == []


def test_isolation_mismatch_and_missing_physical_network_are_refused(world):
    uow, zone, physical = world
    vlan = _network(uow, zone, physical, isolation="VLAN")
    flat = dispatch(
        uow,
        CreateNetwork(account="a", name="f", zone_id=zone, cidr="10.1.0.0/24", isolation="none"),
    ).aggregate_id
    uow.commit()
    with pytest.raises(Validation):
        dispatch(uow, AllocateNetworkTag(network_id=vlan))
    with pytest.raises((Validation, Conflict)):
        dispatch(uow, AllocateNetworkTag(network_id=flat))
    assert uow.commit() == []


def test_return_tag_after_shutdown_frees_it(world):
    uow, zone, physical = world
    network = _network(uow, zone, physical)
    dispatch(uow, AllocateNetworkTag(network_id=network))
    with pytest.raises(InvalidTransition):
        dispatch(uow, ReturnNetworkTag(network_id=network))
    dispatch(uow, ShutdownNetwork(network_id=network))
    assert dispatch(uow, ReturnNetworkTag(network_id=network)).value == 100
    assert uow.get(Network, network).tag is None
    assert uow.get(PhysicalNetwork, physical).tag_of(network) is None
    other = _network(uow, zone, physical, name="other")
    assert dispatch(uow, AllocateNetworkTag(network_id=other)).value == 100


def test_unknown_network_is_not_found(world):
    uow, _zone, _physical = world
    with pytest.raises(Exception, match="not found"):
        dispatch(uow, AllocateNetworkTag(network_id=uuid.uuid4()))
