from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.fabric.cluster import Cluster
from tests.unit.support import assert_disable_then_enable, assert_refused, event_names


def make_cluster(**overrides):
    values = {"zone_id": uuid4(), "pod_id": uuid4(), "name": "cluster-1"}
    values.update(overrides)
    return Cluster.create(**values)


def test_create_defaults_to_kvm():
    zone_id, pod_id, cluster_id = uuid4(), uuid4(), uuid4()
    cluster = make_cluster(zone_id=zone_id, pod_id=pod_id, id=cluster_id)
    assert (cluster.id, cluster.zone_id, cluster.pod_id) == (cluster_id, zone_id, pod_id)
    assert (cluster.hypervisor, cluster.state) == ("kvm", "Enabled")
    assert event_names(cluster) == ["Created"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"name": "  "}, "name"), ({"hypervisor": "xen"}, "hypervisor")],
)
def test_create_refuses_invalid_values(overrides, field):
    with pytest.raises(Validation) as info:
        make_cluster(**overrides)
    assert info.value.field == field


def test_disable_and_enable():
    assert_disable_then_enable(make_cluster())


def test_enable_refused_when_enabled():
    cluster = make_cluster()
    assert_refused(cluster, InvalidTransition, cluster.enable)


def test_disable_refused_when_disabled():
    cluster = make_cluster()
    cluster.disable()
    assert_refused(cluster, InvalidTransition, cluster.disable)
