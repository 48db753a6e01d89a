from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.ip_address import IpAddress
from tests.unit.support import assert_refused, event_names


def make(**kwargs):
    ip = IpAddress.create(network_id=uuid4(), address="10.0.0.2", **kwargs)
    ip.collect_events()
    return ip


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
    assert event_names(ip) == ["Created"]


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
    assert event_names(ip) == ["Associated", "Disassociated", "Released"]


def test_associate_twice_refused():
    ip = make()
    ip.associate(uuid4())
    assert_refused(ip, InvalidTransition, lambda: ip.associate(uuid4()))


def test_disassociate_unassociated_refused():
    ip = make()
    assert_refused(ip, InvalidTransition, ip.disassociate)


def test_release_associated_refused():
    ip = make()
    ip.associate(uuid4())
    assert_refused(ip, InvalidTransition, ip.release)
    assert_refused(ip, InvalidTransition, ip.require_releasable)


def test_nothing_allowed_after_release():
    ip = make()
    ip.release()
    for action in (ip.release, ip.disassociate, lambda: ip.associate(uuid4())):
        assert_refused(ip, InvalidTransition, action)
