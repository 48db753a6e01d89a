from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.fabric.pod import Pod
from tests.unit.support import assert_disable_then_enable, assert_refused, event_names


def make_pod(**overrides):
    values = {"zone_id": uuid4(), "name": "pod-1", "gateway": "10.1.0.1", "cidr": "10.1.0.0/24"}
    values.update(overrides)
    return Pod.create(**values)


def test_create_records_management_network():
    zone_id, pod_id = uuid4(), uuid4()
    pod = make_pod(zone_id=zone_id, id=pod_id)
    assert (pod.id, pod.zone_id, pod.state) == (pod_id, zone_id, "Enabled")
    assert (pod.cidr, pod.gateway) == ("10.1.0.0/24", "10.1.0.1")
    assert (pod.netmask, pod.prefix_length) == ("255.255.255.0", 24)
    assert event_names(pod) == ["Created"]


def test_create_normalises_addresses():
    pod = make_pod(gateway="fd00:0:0:0::1", cidr="fd00:0::/64")
    assert (pod.cidr, pod.gateway) == ("fd00::/64", "fd00::1")


def test_point_to_point_network_may_use_either_address():
    assert make_pod(gateway="10.9.0.0", cidr="10.9.0.0/31").gateway == "10.9.0.0"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"cidr": "10.1.0.5/24"}, "cidr"),
        ({"cidr": "not-a-network"}, "cidr"),
        ({"gateway": "10.1.0.999"}, "gateway"),
        ({"gateway": "10.2.0.1"}, "gateway"),
        ({"gateway": "10.1.0.0"}, "gateway"),
        ({"gateway": "10.1.0.255"}, "gateway"),
        ({"gateway": "fd00::1"}, "gateway"),
    ],
)
def test_create_refuses_invalid_values(overrides, field):
    with pytest.raises(Validation) as info:
        make_pod(**overrides)
    assert info.value.field == field


def test_disable_and_enable():
    assert_disable_then_enable(make_pod())


def test_enable_refused_when_enabled():
    pod = make_pod()
    assert_refused(pod, InvalidTransition, pod.enable)


def test_disable_refused_when_disabled():
    pod = make_pod()
    pod.disable()
    error = assert_refused(pod, InvalidTransition, pod.disable)
    assert error.state == "Disabled"
