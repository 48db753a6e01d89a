import copy
from uuid import uuid4

import pytest

from engine.errors import InvalidTransition, Validation
from engine.virtual.ip_address import IpAddress


def make(**kwargs):
    ip = IpAddress.create(network_id=uuid4(), address="10.0.0.2", **kwargs)
    ip.collect_events()
    return ip


def refused(aggregate, error, action):
    """Run a command that must be refused: typed error, no event, no change."""
    aggregate.collect_events()
    before = copy.deepcopy(aggregate.__dict__)
    with pytest.raises(error) as info:
        action()
    assert aggregate.collect_events() == []
    assert aggregate.__dict__ == before
    return info.value


def names(aggregate):
    return [type(e).__name__ for e in aggregate.collect_events()]


def test_create():
    network_id, owner_id, chosen = uuid4(), uuid4(), uuid4()
    ip = IpAddress.create(network_id=network_id, address="10.0.0.7", owner_id=owner_id, id=chosen)
    assert (ip.id, ip.network_id, ip.address, ip.owner_id) == (
        chosen,
        network_id,
        "10.0.0.7",
        owner_id,
    )
    assert (ip.state, ip.nic_id) == ("Allocated", None)
    assert names(ip) == ["Created"]


@pytest.mark.parametrize("address", ["", "10.0.0", "10.0.0.256", "fd00::1"])
def test_create_rejects_bad_address(address):
    with pytest.raises(Validation) as info:
        IpAddress.create(network_id=uuid4(), address=address)
    assert info.value.field == "address"


def test_associate_disassociate_release():
    ip = make()
    nic_id = uuid4()
    ip.associate(nic_id)
    assert (ip.state, ip.nic_id) == ("Associated", nic_id)
    ip.disassociate()
    assert (ip.state, ip.nic_id) == ("Allocated", None)
    ip.release()
    assert ip.state == "Released"
    assert names(ip) == ["Associated", "Disassociated", "Released"]


def test_associate_twice_refused():
    ip = make()
    ip.associate(uuid4())
    refused(ip, InvalidTransition, lambda: ip.associate(uuid4()))


def test_disassociate_unassociated_refused():
    ip = make()
    refused(ip, InvalidTransition, ip.disassociate)


def test_release_associated_refused():
    ip = make()
    ip.associate(uuid4())
    refused(ip, InvalidTransition, ip.release)
    refused(ip, InvalidTransition, ip.require_releasable)


def test_nothing_allowed_after_release():
    ip = make()
    ip.release()
    for action in (ip.release, ip.disassociate, lambda: ip.associate(uuid4())):
        refused(ip, InvalidTransition, action)
