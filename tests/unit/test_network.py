import time
from uuid import uuid4

import pytest

from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition, Validation
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.virtual.network import Network
from tests.unit.support import assert_refused, event_names, replayed


def make(cidr="10.0.0.0/24", isolation="VLAN", **kwargs):
    network = Network.create(
        account="acct",
        name="net",
        zone_id=uuid4(),
        cidr=cidr,
        isolation=isolation,
        physical_network_id=None if isolation == "none" else uuid4(),
        **kwargs,
    )
    network.collect_events()
    return network


# Creation ---------------------------------------------------------------------------


def test_create_defaults():
    zone_id = uuid4()
    network = Network.create(
        account="acct", name="net", zone_id=zone_id, cidr="10.0.0.0/24", physical_network_id=uuid4()
    )
    assert network.state == "Allocated"
    assert network.gateway == "10.0.0.1"
    assert network.isolation == "VLAN"
    assert network.tag is None
    assert network.zone_id == zone_id
    assert network.free_count == 253
    assert dict(network.allocated) == {}
    assert event_names(network) == ["Created"]


def test_create_with_chosen_id_and_gateway():
    chosen = uuid4()
    network = make(cidr="192.168.8.0/22", gateway="192.168.11.254", id=chosen)
    assert network.id == chosen
    assert network.gateway == "192.168.11.254"
    assert network.free_count == 1021


def test_create_isolation_none_needs_no_physical_network():
    network = make(isolation="none")
    assert network.physical_network_id is None


@pytest.mark.parametrize(
    "cidr",
    ["nonsense", "10.0.0.1/24", "10.0.0.0/7", "10.0.0.0/31", "10.0.0.0/32", "fd00::/64", ""],
)
def test_create_rejects_bad_cidr(cidr):
    with pytest.raises(Validation) as info:
        make(cidr=cidr)
    assert info.value.field == "cidr"


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "10.0.0.0/30", "172.16.0.0/16"])
def test_create_accepts_prefixes_8_to_30(cidr):
    assert make(cidr=cidr).cidr == cidr


@pytest.mark.parametrize("gateway", ["10.0.1.1", "10.0.0.0", "10.0.0.255", "x", "fd00::1"])
def test_create_rejects_bad_gateway(gateway):
    with pytest.raises(Validation) as info:
        make(gateway=gateway)
    assert info.value.field == "gateway"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": " "}, "name"),
        ({"account": ""}, "account"),
        ({"isolation": "GRE"}, "isolation"),
        ({"isolation": "VLAN", "physical_network_id": None}, "physical_network_id"),
    ],
)
def test_create_validation(kwargs, field):
    args = {
        "account": "a",
        "name": "n",
        "zone_id": uuid4(),
        "cidr": "10.0.0.0/24",
        "physical_network_id": uuid4(),
        **kwargs,
    }
    with pytest.raises(Validation) as info:
        Network.create(**args)
    assert info.value.field == field


# Lifecycle --------------------------------------------------------------------------


def test_assign_tag_implements():
    network = make()
    network.assign_tag(100)
    assert (network.state, network.tag) == ("Implemented", 100)
    assert event_names(network) == ["TagAssigned"]


def test_vxlan_accepts_large_tags():
    network = make(isolation="VXLAN")
    network.assign_tag(2**24 - 1)
    assert network.tag == 2**24 - 1


@pytest.mark.parametrize(("isolation", "tag"), [("VLAN", 0), ("VLAN", 4095), ("VXLAN", 2**24)])
def test_assign_tag_out_of_range_refused(isolation, tag):
    network = make(isolation=isolation)
    assert assert_refused(network, Validation, lambda: network.assign_tag(tag)).field == "tag"


def test_assign_tag_refused_without_isolation():
    network = make(isolation="none")
    assert_refused(network, Conflict, lambda: network.assign_tag(10))


def test_assign_tag_refused_when_implemented():
    network = make()
    network.assign_tag(10)
    assert_refused(network, InvalidTransition, lambda: network.assign_tag(11))


def test_assign_tag_refused_when_tag_kept_through_shutdown():
    network = make()
    network.assign_tag(10)
    network.shutdown()
    assert_refused(network, Conflict, lambda: network.assign_tag(11))


def test_implement_without_isolation():
    network = make(isolation="none")
    network.implement()
    assert network.state == "Implemented"
    assert event_names(network) == ["Implemented"]


def test_implement_refused_for_vlan_without_tag():
    network = make()
    assert_refused(network, Conflict, network.implement)


def test_implement_refused_when_implemented():
    network = make(isolation="none")
    network.implement()
    assert_refused(network, InvalidTransition, network.implement)


def test_shutdown_and_reimplement_keeping_tag():
    network = make()
    network.assign_tag(7)
    network.shutdown()
    assert (network.state, network.tag) == ("Shutdown", 7)
    network.implement()
    assert (network.state, network.tag) == ("Implemented", 7)
    assert event_names(network) == ["TagAssigned", "Shutdown", "Implemented"]


@pytest.mark.parametrize("steps", [[], ["shutdown"]])
def test_shutdown_refused_unless_implemented(steps):
    network = make(isolation="none")
    if steps:
        network.implement()
        network.shutdown()
    assert_refused(network, InvalidTransition, network.shutdown)


def test_release_tag_then_reassign():
    network = make()
    network.assign_tag(7)
    network.shutdown()
    assert network.release_tag() == 7
    assert network.tag is None
    network.assign_tag(8)
    assert (network.state, network.tag) == ("Implemented", 8)
    assert event_names(network) == ["TagAssigned", "Shutdown", "TagReleased", "TagAssigned"]


def test_release_tag_refused_while_implemented():
    network = make()
    network.assign_tag(7)
    assert_refused(network, InvalidTransition, network.release_tag)


def test_release_tag_refused_without_tag():
    network = make(isolation="none")
    network.implement()
    network.shutdown()
    assert_refused(network, Conflict, network.release_tag)


def test_destroy_from_allocated():
    network = make()
    network.destroy()
    assert network.state == "Destroyed"
    assert event_names(network) == ["Destroyed"]


def test_destroy_after_shutdown_once_ips_and_tag_are_released():
    network = make()
    network.assign_tag(7)
    address = network.allocate_ip(uuid4(), None)
    network.shutdown()
    assert_refused(network, Conflict, network.destroy)
    network.release_ip(address)
    assert_refused(network, Conflict, network.destroy)  # still holds its tag
    network.release_tag()
    network.destroy()
    assert network.state == "Destroyed"


def test_destroy_refused_while_implemented():
    network = make(isolation="none")
    network.implement()
    assert_refused(network, InvalidTransition, network.destroy)


def test_nothing_allowed_after_destroy():
    network = make()
    network.destroy()
    for action in (
        network.destroy,
        network.implement,
        network.shutdown,
        network.release_tag,
        lambda: network.assign_tag(5),
        lambda: network.allocate_ip(uuid4(), None),
        lambda: network.release_ip("10.0.0.2"),
    ):
        assert_refused(network, InvalidTransition, action)


# Address allocation -------------------------------------------------------------------


def test_allocates_lowest_first_skipping_gateway():
    network = make()
    ip_id, owner = uuid4(), uuid4()
    assert network.allocate_ip(ip_id, owner) == "10.0.0.2"
    assert network.allocate_ip(uuid4(), None) == "10.0.0.3"
    assert network.allocated["10.0.0.2"] == ip_id
    assert network.free_count == 251
    events = network.collect_events()
    assert [type(e).__name__ for e in events] == ["IpAllocated", "IpAllocated"]
    assert (events[0].ip_id, events[0].address, events[0].owner_id) == (ip_id, "10.0.0.2", owner)


def test_gateway_in_the_middle_is_skipped():
    network = make(cidr="10.0.0.0/29", gateway="10.0.0.3")
    got = [network.allocate_ip(uuid4(), None) for _ in range(5)]
    assert got == ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert_refused(network, CapacityExceeded, lambda: network.allocate_ip(uuid4(), None))


def test_requested_address():
    network = make()
    assert network.allocate_ip(uuid4(), None, "10.0.0.50") == "10.0.0.50"
    assert network.allocate_ip(uuid4(), None) == "10.0.0.2"
    assert network.allocate_ip(uuid4(), None, "10.0.0.3") == "10.0.0.3"
    assert network.allocate_ip(uuid4(), None) == "10.0.0.4"


def test_requested_lowest_free_moves_the_next_choice_on():
    network = make()
    network.allocate_ip(uuid4(), None, "10.0.0.2")
    assert network.allocate_ip(uuid4(), None) == "10.0.0.3"


@pytest.mark.parametrize(
    "requested", ["10.0.1.5", "10.0.0.0", "10.0.0.255", "10.0.0.1", "bogus", "010.0.0.5"]
)
def test_requested_address_outside_or_reserved_refused(requested):
    network = make()
    assert (
        assert_refused(
            network, Validation, lambda: network.allocate_ip(uuid4(), None, requested)
        ).field
        == "address"
    )


def test_requested_address_taken_refused():
    network = make()
    network.allocate_ip(uuid4(), None, "10.0.0.9")
    assert_refused(network, Conflict, lambda: network.allocate_ip(uuid4(), None, "10.0.0.9"))


def test_exhaustion_on_a_slash_30():
    network = make(cidr="192.168.1.0/30")
    assert network.free_count == 1
    assert network.allocate_ip(uuid4(), None) == "192.168.1.2"
    assert network.free_count == 0
    assert_refused(network, CapacityExceeded, lambda: network.allocate_ip(uuid4(), None))
    assert_refused(network, Conflict, lambda: network.allocate_ip(uuid4(), None, "192.168.1.2"))


def test_release_then_reuse_of_lowest():
    network = make()
    got = [network.allocate_ip(uuid4(), None) for _ in range(5)]
    assert got[-1] == "10.0.0.6"
    network.release_ip("10.0.0.4")
    network.release_ip("10.0.0.3")
    assert "10.0.0.3" not in network.allocated
    assert network.allocate_ip(uuid4(), None) == "10.0.0.3"
    assert network.allocate_ip(uuid4(), None) == "10.0.0.4"
    assert network.allocate_ip(uuid4(), None) == "10.0.0.7"


def test_release_event_names_the_ip():
    network = make()
    ip_id = uuid4()
    network.allocate_ip(ip_id, None)
    network.collect_events()
    network.release_ip("10.0.0.2")
    [released] = network.collect_events()
    assert (type(released).__name__, released.address, released.ip_id) == (
        "IpReleased",
        "10.0.0.2",
        ip_id,
    )


def test_release_unallocated_refused():
    network = make()
    network.allocate_ip(uuid4(), None)
    assert_refused(network, Conflict, lambda: network.release_ip("10.0.0.3"))
    assert_refused(network, Conflict, lambda: network.release_ip("10.0.0.1"))


def test_release_malformed_refused():
    network = make()
    assert_refused(network, Validation, lambda: network.release_ip("nope"))


def test_allocation_refused_after_shutdown_but_release_allowed():
    network = make()
    network.assign_tag(3)
    network.allocate_ip(uuid4(), None)
    network.shutdown()
    assert_refused(network, InvalidTransition, lambda: network.allocate_ip(uuid4(), None))
    network.release_ip("10.0.0.2")
    assert network.free_count == 253


def test_allocated_is_read_only():
    network = make()
    with pytest.raises(TypeError):
        network.allocated["10.0.0.9"] = uuid4()


def test_contains():
    network = make()
    assert network.contains("10.0.0.77")
    assert not network.contains("10.0.1.1")


def test_replay_rebuilds_the_pool():
    network = Network.create(
        account="a", name="n", zone_id=uuid4(), cidr="10.0.0.0/28", physical_network_id=uuid4()
    )
    for _ in range(4):
        network.allocate_ip(uuid4(), None)
    network.allocate_ip(uuid4(), uuid4(), "10.0.0.9")
    network.release_ip("10.0.0.3")
    network.assign_tag(12)
    copy_ = replayed(network.collect_events(), MsgspecMapper())
    assert dict(copy_.allocated) == dict(network.allocated)
    assert (copy_.state, copy_.tag, copy_.free_count) == ("Implemented", 12, network.free_count)
    assert copy_.allocate_ip(uuid4(), None) == network.allocate_ip(uuid4(), None) == "10.0.0.3"


def test_a_slash_8_is_cheap_to_create_and_use():
    network = make(cidr="10.0.0.0/8")
    assert network.free_count == 2**24 - 3
    assert network.allocate_ip(uuid4(), None, "10.255.255.254") == "10.255.255.254"
    assert network.allocate_ip(uuid4(), None) == "10.0.0.2"


def test_sequential_allocation_on_a_slash_16():
    network = make(cidr="172.16.0.0/16")
    for _ in range(3000):
        last = network.allocate_ip(uuid4(), None)
    assert last == "172.16.11.185"  # 3000th host after the gateway: 2 + 2999 = 11*256 + 185
    assert network.free_count == 65533 - 3000


def test_thousand_allocations_are_fast():
    ids = [uuid4() for _ in range(1000)]
    best = float("inf")
    for _ in range(3):
        network = make(cidr="10.0.0.0/22")
        started = time.process_time()
        for ip_id in ids:
            network.allocate_ip(ip_id, None)
        best = min(best, time.process_time() - started)
    assert network.free_count == 1021 - 1000
    assert best < 0.05
