"""`up`'s demo hosts: each on a libvirt test driver of its own (a node file
in the data directory), so neither sees the other's domains and the
reconciler finds nothing to report on a fresh demo: no sample domain, no
"event callback already tracked". Real test driver, real event store and
read models (rebuilt from the log)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import cloud_engine.runner.demo
from cloud_engine.effectors.compute.driver import ComputeDriver
from cloud_engine.effectors.compute.spec import DomainSpec
from cloud_engine.effectors.desired import ReadModels
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.reconciler import Reconciler, start_libvirt_event_loop
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect, create_pool
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Rebuild
from cloud_engine.runner.demo import (
    SAMPLE_DOMAIN,
    SHARED_TEST_DRIVER,
    DemoFabric,
    demo_host_uri,
    ensure_demo_fabric,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def executor() -> Iterator[Executor]:
    # Lifecycle events only reach connections opened after the loop exists.
    start_libvirt_event_loop()
    executor = Executor("effector@demo-test")
    yield executor
    executor.close()


def _stray_domain(executor: Executor, uri: str) -> uuid.UUID:
    """A domain no VM claims, defined and started through the effector's
    connection to uri."""
    vm = uuid.uuid4()
    driver = ComputeDriver(executor.hypervisor(uri), poll_interval_s=0.01)
    driver.define(DomainSpec(uuid=vm, name=f"stray-{vm.hex[:8]}", vcpus=1, memory_mb=64))
    driver.start(vm)
    return vm


def test_each_demo_host_is_a_hypervisor_of_its_own(tmp_path: Path, executor: Executor) -> None:
    one, two = (demo_host_uri(tmp_path, f"host-{n}", 16, 65536) for n in (1, 2))
    assert one == f"test://{tmp_path.resolve()}/demo-hosts/host-1.xml"
    # The reconciler asks the executor too: one connection, one state per URI.
    assert executor.hypervisor(one) is executor.hypervisor(one)
    conn_one, conn_two = executor.hypervisor(one).conn, executor.hypervisor(two).conn
    assert conn_one.listAllDomains() == conn_two.listAllDomains() == []  # no sample domain
    assert conn_one.getInfo()[1:3] == [65536, 16]  # MiB, CPUs: the registered size

    vm = _stray_domain(executor, one)
    assert [d.UUIDString() for d in conn_one.listAllDomains()] == [str(vm)]
    assert conn_two.listAllDomains() == []


async def _reconcile(
    target: DatabaseTarget, fabric: DemoFabric, executor: Executor, rounds: int
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The results of a reconciler's rounds over the demo zone, and its log."""
    pool = await create_pool(target, max_size=2)
    try:
        published: list[Any] = []

        async def publish(result: Any) -> None:
            published.append(result)

        reconciler = Reconciler(
            ReadModels(pool, target.schema),
            publish,
            zones=frozenset({fabric.zone}),
            effector="effector@demo-test",
            hypervisor_for=executor.hypervisor,
            lifecycle_events=True,  # as the effector service runs it
        )
        with structlog.testing.capture_logs() as logs:
            for _ in range(rounds):
                await reconciler.reconcile_once()
        for host in fabric.hosts:  # let go of the connections' callbacks
            await asyncio.to_thread(reconciler._unwatch, host)
        return published, logs
    finally:
        await pool.close()


def _demo(
    service: CommandService, store: EventStore, target: DatabaseTarget, data_dir: Path
) -> DemoFabric:
    fabric, images = ensure_demo_fabric(service, store, data_dir)
    if images is not None:
        images.close()
    asyncio.run(_project(target))
    return fabric


async def _project(target: DatabaseTarget) -> None:
    """The read models, from the log (as the projection worker would)."""
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
    finally:
        await conn.close()
    await Rebuild(target, processes=1).run()


def test_the_reconciler_finds_no_drift_on_a_fresh_demo_and_one_stray_domain_where_it_is(
    service: CommandService,
    store: EventStore,
    pg_target: DatabaseTarget,
    tmp_path: Path,
    executor: Executor,
) -> None:
    fabric = _demo(service, store, pg_target, tmp_path)
    hosts = [store.load(h) for h in fabric.hosts]
    uris = [h.libvirt_uri for h in hosts if isinstance(h, Host)]
    assert uris == [demo_host_uri(tmp_path, f"host-{n}", 16, 65536) for n in (1, 2)]

    # Two rounds: the second finds both hosts' lifecycle callbacks in place.
    results, logs = asyncio.run(_reconcile(pg_target, fabric, executor, 2))
    assert results == []
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []

    stray = _stray_domain(executor, uris[0])
    results, _ = asyncio.run(_reconcile(pg_target, fabric, executor, 1))
    assert [(r.kind, r.aggregate_id, r.host_id) for r in results] == [
        ("drift.unknown_domain", stray, fabric.hosts[0])
    ]


def test_an_older_ups_demo_hosts_on_the_shared_driver_go_on_quietly(
    service: CommandService,
    store: EventStore,
    pg_target: DatabaseTarget,
    tmp_path: Path,
    executor: Executor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A data directory an older up made: its demo hosts on test:///default.
    monkeypatch.setattr(cloud_engine.runner.demo, "demo_host_uri", lambda *_: SHARED_TEST_DRIVER)
    older = _demo(service, store, pg_target, tmp_path)
    monkeypatch.undo()

    fabric = _demo(service, store, pg_target, tmp_path)
    assert fabric == older  # the same hosts, found by their keys
    hosts = [store.load(h) for h in fabric.hosts]
    assert {h.libvirt_uri for h in hosts if isinstance(h, Host)} == {SHARED_TEST_DRIVER}

    results, logs = asyncio.run(_reconcile(pg_target, fabric, executor, 2))
    # The driver's sample domain is gone (other tests' leftovers on the
    # process-wide test:///default may be reported; it may not).
    assert [r for r in results if r.aggregate_id == SAMPLE_DOMAIN] == []
    # Both hosts' events come through the one shared connection.
    assert [e for e in logs if e["event"] == "lifecycle_events_unavailable"] == []


def test_a_moved_data_directory_is_named_as_the_reason(
    service: CommandService, store: EventStore, pg_target: DatabaseTarget, tmp_path: Path
) -> None:
    _demo(service, store, pg_target, tmp_path / "before")
    with pytest.raises(Conflict, match="data directory moved"):
        ensure_demo_fabric(service, store, tmp_path / "after")
