"""Which shared pools a host must have, and making sure of them on libvirt's
in-process test driver (test:///default: real libvirt, no daemon)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from structlog.testing import capture_logs

from cloud_engine.effectors.desired import HostView, PoolView
from cloud_engine.effectors.host_pools import HostPools, shared_pools_of
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

ZONE, OTHER_ZONE = uuid.uuid4(), uuid.uuid4()
CLUSTER, OTHER_CLUSTER = uuid.uuid4(), uuid.uuid4()


def host(cluster: uuid.UUID | None = CLUSTER) -> HostView:
    return HostView(
        id=uuid.uuid4(),
        version=1,
        name="h1",
        zone_id=ZONE,
        state="Enabled",
        libvirt_uri="test:///default",
        cluster_id=cluster,
    )


def pool(url: str = "/srv/p", **fields: object) -> PoolView:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "version": 1,
        "zone_id": ZONE,
        "state": "Enabled",
        "url": url,
        "scope": "cluster",
        "cluster_id": CLUSTER,
    }
    values.update(fields)
    return PoolView(**values)  # type: ignore[arg-type]


def test_a_host_must_have_its_clusters_and_its_zones_shared_pools_only():
    mine = host()
    cluster_pool = pool()
    zone_pool = pool(scope="zone", cluster_id=None)
    in_maintenance = pool(state="Maintenance")
    others = [
        pool(cluster_id=OTHER_CLUSTER),
        pool(scope="zone", cluster_id=None, zone_id=OTHER_ZONE),
        # A host-local pool, even this host's own, is its volumes' business.
        pool(scope="host", cluster_id=None, host_id=mine.id),
    ]
    wanted = shared_pools_of(mine, [*others, cluster_pool, zone_pool, in_maintenance])
    assert {p.id for p in wanted} == {cluster_pool.id, zone_pool.id, in_maintenance.id}
    # A host in no cluster still has its zone's.
    assert [p.id for p in shared_pools_of(host(cluster=None), [cluster_pool, zone_pool])] == [
        zone_pool.id
    ]


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    hypervisor = Hypervisor("test:///default", attempts=1)
    try:
        yield hypervisor
    finally:
        hypervisor.close()


def test_a_missing_shared_pool_is_defined_started_and_autostarted_once(
    hv: Hypervisor, tmp_path: Path
):
    names = Names(prefix=f"ce-u{uuid.uuid4().hex[:6]}-")
    shared = pool(url=str(tmp_path / "shared"))
    pools = HostPools(names)
    assert pools.ensure(hv, host(), [shared, pool(cluster_id=OTHER_CLUSTER)]) == []
    defined = hv.conn.storagePoolLookupByName(names.pool(shared.id))
    assert defined.isActive() and defined.autostart()
    assert pools.made_ready == 1
    # The next round finds it active and leaves it as it is.
    assert pools.ensure(hv, host(), [shared]) == []
    assert pools.made_ready == 1
    # Stopped behind the effector's back: started again.
    defined.destroy()
    assert pools.ensure(hv, host(), [shared]) == []
    assert defined.isActive() and pools.made_ready == 2


def test_a_pool_that_cannot_be_made_ready_is_reported_every_round_logged_once(
    hv: Hypervisor, tmp_path: Path
):
    names = Names(prefix=f"ce-u{uuid.uuid4().hex[:6]}-")
    unserved = pool(url="rbd://ceph/volumes")
    fine = pool(url=str(tmp_path / "fine"))
    pools = HostPools(names)
    me = host()
    with capture_logs() as logs:
        first = pools.ensure(hv, me, [unserved, fine])
        second = pools.ensure(hv, me, [unserved, fine])
    assert [(t.host_id, t.pool_id) for t in first] == [(me.id, unserved.id)]
    assert "rbd" in first[0].error
    # The same outage: the same start, so a report of it is the same report.
    assert second == first
    assert pools.failing() == first
    assert [e["event"] for e in logs].count("shared_pool_not_ready") == 1
    # The pool that can be served is, beside the one that cannot.
    assert hv.conn.storagePoolLookupByName(names.pool(fine.id)).isActive()
    # Gone from the hosts' needs (e.g. the host moved cluster): no outage left.
    assert pools.ensure(hv, me, [fine]) == []
    assert pools.failing() == []
