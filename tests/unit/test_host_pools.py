"""Which shared pools a host must have, and making sure of them on libvirt's
in-process test driver (test:///default: real libvirt, no daemon)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from structlog.testing import capture_logs

from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.effectors.desired import HostView, PoolView
from cloud_engine.effectors.host_pools import HostPools, shared_pools_of
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.reconciler import Reconciler

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


class Models:
    """The read models a reconcile round reads: one host, some pools."""

    def __init__(self, the_host: HostView, pools: list[PoolView]) -> None:
        self.host, self.pools = the_host, pools

    async def hosts(self, zones):
        return [self.host]

    async def where(self, cls, aggregate_type, field, value):
        if aggregate_type != "storage_pool":
            return []
        return [p for p in self.pools if getattr(p, field) == value]

    async def where_in(self, cls, aggregate_type, field, values):
        return []


async def test_the_reconciler_reports_a_pool_a_host_lacks_once_an_outage(
    hv: Hypervisor, tmp_path: Path
):
    names = Names(prefix=f"ce-u{uuid.uuid4().hex[:6]}-")
    me = host()
    unserved = pool(url="rbd://ceph/volumes")
    models = Models(me, [unserved, pool(url=str(tmp_path / "fine"))])
    published: list[EffectorResult] = []

    async def publish(result: EffectorResult) -> None:
        published.append(result)

    rec = Reconciler(
        models,
        publish,
        zones=None,
        effector="e1",
        hypervisor_for=lambda _uri: hv,
        names=names,
        check_volumes=False,
    )

    def reports() -> list[EffectorResult]:
        return [r for r in published if r.kind == "drift.host_pool"]

    await rec.reconcile_once()
    await rec.reconcile_once()
    [report] = reports()
    assert (report.aggregate_id, report.host_id) == (unserved.id, me.id)
    assert report.observed is not None and "rbd" in report.observed
    # Served now: the outage ends. Unserved again: a new outage, a new report.
    models.pools[0] = pool(url=str(tmp_path / "now-fine"), id=unserved.id)
    await rec.reconcile_once()
    assert len(reports()) == 1
    # Stopped behind its back while its URL is one no backend serves.
    hv.conn.storagePoolLookupByName(names.pool(unserved.id)).destroy()
    models.pools[0] = pool(url="rbd://ceph/other", id=unserved.id)
    await rec.reconcile_once()
    first, second = reports()
    assert second.aggregate_id == unserved.id and second.work_id != first.work_id
