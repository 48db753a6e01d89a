from uuid import UUID, uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.nic import Nic, mac_for, require_mac
from tests.unit.support import assert_refused, event_names


def make(**kwargs):
    nic = Nic.create(vm_id=uuid4(), network_id=uuid4(), device_id=0, **kwargs)
    nic.collect_events()
    return nic


def test_create_derives_mac_from_id():
    chosen = UUID("12345678-1234-4234-8234-0123456789ab")
    nic = Nic.create(vm_id=uuid4(), network_id=uuid4(), device_id=2, id=chosen)
    assert nic.id == chosen
    assert nic.mac == "02:23:45:67:89:ab"
    assert (nic.state, nic.device_id, nic.ip_id, nic.address) == ("Allocated", 2, None, None)
    assert event_names(nic) == ["Created"]


def test_generated_macs_are_locally_administered_unicast():
    for _ in range(200):
        nic_id = uuid4()
        mac = mac_for(nic_id)
        require_mac(mac)
        assert mac.startswith("02:")
        assert mac == mac_for(nic_id)


def test_create_without_id_still_derives_mac():
    nic = make()
    assert nic.mac == mac_for(nic.id)


def test_create_with_ip():
    ip_id = uuid4()
    nic = make(ip_id=ip_id, address="10.0.0.5")
    assert (nic.ip_id, nic.address) == (ip_id, "10.0.0.5")


def test_given_mac_is_normalised():
    assert make(mac="0A:00:00:00:00:01").mac == "0a:00:00:00:00:01"


@pytest.mark.parametrize(
    "mac",
    [
        "00:16:3e:00:00:01",  # vendor (universally administered)
        "03:00:00:00:00:01",  # multicast
        "ff:ff:ff:ff:ff:ff",  # broadcast
        "02:00:00:00:00",
        "02-00-00-00-00-01",
        "02:00:00:00:00:0g",
    ],
)
def test_bad_mac_refused(mac):
    with pytest.raises(Validation) as info:
        make(mac=mac)
    assert info.value.field == "mac"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device_id": -1}, "device_id"),
        ({"device_id": 32}, "device_id"),
        ({"ip_id": uuid4()}, "address"),
        ({"address": "10.0.0.5"}, "address"),
        ({"ip_id": uuid4(), "address": "10.0.0.300"}, "address"),
    ],
)
def test_create_validation(kwargs, field):
    args = {"vm_id": uuid4(), "network_id": uuid4(), "device_id": 0, **kwargs}
    with pytest.raises(Validation) as info:
        Nic.create(**args)
    assert info.value.field == field


def test_lifecycle():
    nic = make()
    nic.plug()
    assert nic.state == "Plugged"
    nic.unplug()
    assert nic.state == "Unplugged"
    nic.plug()
    nic.unplug()
    nic.release()
    assert nic.state == "Released"
    assert event_names(nic) == ["Plugged", "Unplugged", "Plugged", "Unplugged", "Released"]


def test_release_straight_from_allocated():
    nic = make()
    nic.release()
    assert nic.state == "Released"


def test_unplug_refused_unless_plugged():
    nic = make()
    assert_refused(nic, InvalidTransition, nic.unplug)
    nic.plug()
    nic.unplug()
    assert_refused(nic, InvalidTransition, nic.unplug)


def test_plug_twice_refused():
    nic = make()
    nic.plug()
    assert_refused(nic, InvalidTransition, nic.plug)


def test_release_plugged_refused():
    nic = make()
    nic.plug()
    assert_refused(nic, InvalidTransition, nic.release)


def test_nothing_allowed_after_release():
    nic = make()
    nic.release()
    for action in (nic.plug, nic.unplug, nic.release):
        assert_refused(nic, InvalidTransition, action)


def test_a_mac_with_a_trailing_newline_is_refused():
    with pytest.raises(Validation):
        require_mac("02:00:5e:10:00:01\n")
