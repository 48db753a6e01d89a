import time
from uuid import uuid4

import pytest

from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork, TagRange
from tests.unit.support import assert_disable_then_enable, assert_refused, event_names, replayed

SMALL_RANGE = TagRange(100, 104)


def make_network(isolation="VLAN", tag_range=SMALL_RANGE, **overrides):
    return PhysicalNetwork.create(
        zone_id=uuid4(), name="guest", isolation=isolation, tag_range=tag_range, **overrides
    )


# Creation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("isolation", "tag_range"),
    [
        ("VLAN", TagRange(1, 4094)),
        ("VLAN", TagRange(7, 7)),
        ("VXLAN", TagRange(1, 16_777_215)),
        ("none", None),
    ],
)
def test_create_accepts_valid_ranges(isolation, tag_range):
    network_id = uuid4()
    network = make_network(isolation, tag_range, id=network_id)
    assert network.id == network_id
    assert (network.isolation, network.tag_range, network.state) == (
        isolation,
        tag_range,
        "Enabled",
    )
    assert event_names(network) == ["Created"]


@pytest.mark.parametrize(
    ("isolation", "tag_range"),
    [
        ("VLAN", None),
        ("VLAN", TagRange(0, 10)),
        ("VLAN", TagRange(1, 4095)),
        ("VLAN", TagRange(20, 10)),
        ("VXLAN", None),
        ("VXLAN", TagRange(0, 5)),
        ("VXLAN", TagRange(1, 16_777_216)),
        ("none", TagRange(1, 10)),
    ],
)
def test_create_refuses_invalid_ranges(isolation, tag_range):
    with pytest.raises(Validation) as info:
        make_network(isolation, tag_range)
    assert info.value.field == "tag_range"


@pytest.mark.parametrize(
    ("overrides", "field"), [({"isolation": "GRE"}, "isolation"), ({"name": ""}, "name")]
)
def test_create_refuses_invalid_values(overrides, field):
    values = {"zone_id": uuid4(), "name": "n", "isolation": "VLAN", "tag_range": TagRange(1, 2)}
    values.update(overrides)
    with pytest.raises(Validation) as info:
        PhysicalNetwork.create(**values)
    assert info.value.field == field


# State machine -------------------------------------------------------------------


def test_disable_and_enable():
    assert_disable_then_enable(make_network())


def test_enable_refused_when_enabled():
    network = make_network()
    assert_refused(network, InvalidTransition, network.enable)


def test_disable_refused_when_disabled():
    network = make_network()
    network.disable()
    assert_refused(network, InvalidTransition, network.disable)


# Tags ----------------------------------------------------------------------------


def test_tags_are_allocated_lowest_first():
    network = make_network()
    owners = [uuid4() for _ in range(3)]
    assert [network.allocate_tag(o) for o in owners] == [100, 101, 102]
    assert network.allocated_tags == dict(zip([100, 101, 102], owners, strict=True))
    assert network.tag_of(owners[1]) == 101
    assert network.free_tag_count == 2
    assert event_names(network) == ["Created", "TagAllocated", "TagAllocated", "TagAllocated"]


def test_released_tag_is_reused_first():
    network = make_network()
    owners = [uuid4() for _ in range(4)]
    for owner in owners:
        network.allocate_tag(owner)
    network.release_tag(101, owners[1])
    network.release_tag(102, owners[2])
    assert network.tag_of(owners[1]) is None
    assert network.allocate_tag(uuid4()) == 101
    assert network.allocate_tag(uuid4()) == 102
    assert network.allocate_tag(uuid4()) == 104


def test_allocation_event_carries_tag_and_owner():
    network = make_network()
    network.collect_events()
    owner = uuid4()
    network.allocate_tag(owner)
    (allocated,) = network.collect_events()
    assert (allocated.tag, allocated.owner_id) == (100, owner)


def test_exhausted_range_is_refused():
    network = make_network(tag_range=TagRange(5, 6))
    network.allocate_tag(uuid4())
    network.allocate_tag(uuid4())
    assert network.free_tag_count == 0
    assert_refused(network, CapacityExceeded, lambda: network.allocate_tag(uuid4()))


def test_owner_cannot_hold_two_tags():
    network = make_network()
    owner = uuid4()
    network.allocate_tag(owner)
    assert_refused(network, Conflict, lambda: network.allocate_tag(owner))


def test_allocation_refused_when_disabled():
    network = make_network()
    network.disable()
    assert_refused(network, InvalidTransition, lambda: network.allocate_tag(uuid4()))


def test_allocation_refused_without_isolation():
    network = make_network("none", None)
    assert_refused(network, InvalidTransition, lambda: network.allocate_tag(uuid4()))


def test_release_refused_for_another_owner():
    network = make_network()
    network.allocate_tag(uuid4())
    error = assert_refused(network, Conflict, lambda: network.release_tag(100, uuid4()))
    assert error.field == "tag"


def test_release_refused_for_a_free_tag():
    network = make_network()
    assert_refused(network, Conflict, lambda: network.release_tag(100, uuid4()))


def test_release_allowed_when_disabled():
    network = make_network()
    owner = uuid4()
    network.allocate_tag(owner)
    network.disable()
    network.collect_events()
    network.release_tag(100, owner)
    assert event_names(network) == ["TagReleased"]
    assert network.allocated_tags == {}


def test_big_vxlan_range_allocates_without_scanning_it():
    network = make_network("VXLAN", TagRange(1, 16_777_215))
    started = time.perf_counter()
    tags = [network.allocate_tag(uuid4()) for _ in range(2000)]
    assert tags == list(range(1, 2001))
    assert network.free_tag_count == 16_777_215 - 2000
    assert time.perf_counter() - started < 2.0


def test_last_tags_of_a_vxlan_range_are_reachable():
    network = make_network("VXLAN", TagRange(16_777_214, 16_777_215))
    assert network.allocate_tag(uuid4()) == 16_777_214
    assert network.allocate_tag(uuid4()) == 16_777_215
    assert_refused(network, CapacityExceeded, lambda: network.allocate_tag(uuid4()))


def test_replaying_events_rebuilds_the_same_allocation():
    network = make_network()
    owners = [uuid4() for _ in range(5)]
    for owner in owners:
        network.allocate_tag(owner)
    network.release_tag(100, owners[0])
    network.release_tag(103, owners[3])
    rebuilt = replayed(network.collect_events())
    assert vars(rebuilt) == vars(network)
    assert rebuilt.allocate_tag(uuid4()) == 100
    assert rebuilt.allocate_tag(uuid4()) == 103
