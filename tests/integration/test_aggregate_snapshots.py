"""Aggregate snapshots on a real PostgreSQL: a cold load starts from the
snapshot and folds only the events after it, to the state every event
gives; a snapshot other code took is ignored and rebuilt; optimistic
concurrency holds, and a refused write leaves no snapshot behind."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from cloud_engine.engine import aggregate_snapshots as snapshots
from cloud_engine.engine.commands.hosts import ReleaseHostCapacity, ReserveHostCapacity
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from tests.unit.support import make_host

pytestmark = pytest.mark.postgres

EVERY = 10


def new_host(store: EventStore) -> Host:
    host = make_host(name="hot", cpu_cores=64, ram_mb=65536, libvirt_uri="test:///default")
    store.append(host.collect_events())
    return host


def grow(store: EventStore, host: Host, events: int) -> list[uuid.UUID]:
    """Reserve and release on the host, one append per event, snapshotting
    as the service does; returns the VMs still holding a reservation."""
    held: list[uuid.UUID] = []
    for n in range(events):
        if n % 3 == 2:
            host.release(held.pop(0))
        else:
            held.append(uuid.uuid4())
            host.reserve(held[-1], 1, 256)
        pending = host.collect_events()
        due = snapshots.due(host.version, len(pending), EVERY)
        store.append(pending, snapshot=[host] if due else [])
    return held


def table(pg_target) -> str:
    return f'"{pg_target.schema}".{snapshots.SNAPSHOTS_TABLE}'


def row(pg_target, host_id: uuid.UUID) -> tuple | None:
    with psycopg.connect(pg_target.conninfo()) as conn:
        return conn.execute(
            "SELECT originator_version, fingerprint, state"
            f" FROM {table(pg_target)} WHERE originator_id = %s",
            (host_id,),
        ).fetchone()


def put_row(pg_target, host_id: uuid.UUID, fingerprint: str, state: bytes) -> None:
    with psycopg.connect(pg_target.conninfo()) as conn:
        conn.execute(
            f"UPDATE {table(pg_target)} SET fingerprint = %s, state = %s WHERE originator_id = %s",
            (fingerprint, state, host_id),
        )


def renamed(pg_target, host_id: uuid.UUID, name: str) -> bytes:
    """The stored snapshot's state with another name: a load that returns
    this name read the snapshot."""
    version, fingerprint, state = row(pg_target, host_id)
    restored = snapshots.restore(host_id, version, get_topic(Host), fingerprint, state)
    assert restored is not None
    restored.name = name  # type: ignore[attr-defined]
    return snapshots.take(restored).state


def comparable(host: object) -> dict:
    return {k: v for k, v in vars(host).items() if k != "_pending_events"}


def test_a_cold_load_starts_from_the_snapshot_and_equals_every_event_folded(
    store: EventStore, pg_target
):
    host = new_host(store)
    held = grow(store, host, 2 * EVERY + 4)  # version 25: snapshot at 20
    version, fingerprint, _ = row(pg_target, host.id)
    assert (version, fingerprint) == (2 * EVERY, snapshots.fingerprint(Host))

    loaded = store.load(host.id)
    assert isinstance(loaded, Host) and loaded.version == 2 * EVERY + 5
    assert comparable(loaded) == comparable(store.load_from_events([host.id])[host.id])
    assert sorted(loaded.reservations) == sorted(held)

    put_row(pg_target, host.id, fingerprint, renamed(pg_target, host.id, "from-snapshot"))
    used = store.load(host.id)
    assert isinstance(used, Host)
    # The snapshot's state, then the five events after it.
    assert used.name == "from-snapshot" and used.version == 2 * EVERY + 5
    assert sorted(used.reservations) == sorted(held)


def test_a_snapshot_other_code_took_is_ignored_and_rebuilt(store: EventStore, pg_target):
    host = new_host(store)
    grow(store, host, 2 * EVERY + 4)
    put_row(pg_target, host.id, "other-code", renamed(pg_target, host.id, "wrong"))

    loaded = store.load(host.id)
    assert isinstance(loaded, Host) and loaded.name == "hot"
    assert comparable(loaded) == comparable(store.load_from_events([host.id])[host.id])
    # Replaced by one of this code, at the version just folded.
    version, fingerprint, _ = row(pg_target, host.id)
    assert (version, fingerprint) == (2 * EVERY + 5, snapshots.fingerprint(Host))


def test_a_change_to_the_aggregates_code_makes_its_snapshots_stale(
    store: EventStore, pg_target, monkeypatch: pytest.MonkeyPatch
):
    host = new_host(store)
    grow(store, host, EVERY + 1)
    put_row(pg_target, host.id, row(pg_target, host.id)[1], renamed(pg_target, host.id, "wrong"))
    # The digest covers the modules the state's classes come from ...
    modules = {m.__name__ for m in snapshots._engine_modules(Host)}
    assert {"cloud_engine.engine.fabric.host", "cloud_engine.engine.fabric.capacity"} <= modules
    # ... and a declared version: bumping it is a change of code.
    monkeypatch.setattr(Host, "snapshot_version", 2, raising=False)
    monkeypatch.setattr(snapshots, "_fingerprints", {})
    loaded = store.load(host.id)
    assert isinstance(loaded, Host) and loaded.name == "hot"
    assert row(pg_target, host.id)[1] == snapshots.fingerprint(Host)


def test_concurrent_writers_still_conflict_and_the_loser_leaves_no_snapshot(
    store: EventStore, pg_target
):
    host = new_host(store)
    grow(store, host, 2 * EVERY - 2)  # version 19: the next event takes one
    other = EventStore(pg_target)
    try:
        first, second = store.load(host.id), other.load(host.id)
        assert isinstance(first, Host) and isinstance(second, Host)
        winner, loser = uuid.uuid4(), uuid.uuid4()
        first.reserve(winner, 1, 256)
        second.reserve(loser, 1, 256)
        store.append(first.collect_events(), snapshot=[first])
        with pytest.raises(IntegrityError):
            other.append(second.collect_events(), snapshot=[second])
    finally:
        other.close()
    assert row(pg_target, host.id)[0] == 2 * EVERY
    loaded = store.load(host.id)
    assert isinstance(loaded, Host)
    assert winner in loaded.reservations and loser not in loaded.reservations


def test_the_service_snapshots_hot_aggregates_every_n_events(store: EventStore, pg_target):
    host = new_host(store)
    service = CommandService(store, snapshot_every=EVERY)
    try:
        vms = [uuid.uuid4() for _ in range(EVERY)]
        for vm in vms:
            service.execute(ReserveHostCapacity(host_id=host.id, vm_id=vm, cpus=1, ram_mb=256))
        for vm in vms[:3]:
            service.execute(ReleaseHostCapacity(host_id=host.id, vm_id=vm))
    finally:
        service.close()
    assert row(pg_target, host.id)[0] == EVERY
    loaded = store.load(host.id)
    assert isinstance(loaded, Host) and loaded.version == EVERY + 4
    assert sorted(loaded.reservations) == sorted(vms[3:])


async def test_one_batch_touching_an_aggregate_twice_writes_one_snapshot(
    store: EventStore, pg_target
):
    # Commands submitted together commit as one batch; two of them on one
    # host both took it past a snapshot point, and the batch's upsert named
    # the host twice: PostgreSQL refused the whole batch (seen in CI).
    host = new_host(store)
    service = CommandService(store, snapshot_every=1)
    vms = [uuid.uuid4() for _ in range(20)]
    try:
        await asyncio.gather(
            *(
                service.execute_async(
                    ReserveHostCapacity(host_id=host.id, vm_id=vm, cpus=1, ram_mb=256)
                )
                for vm in vms
            )
        )
    finally:
        service.close()
    loaded = store.load(host.id)
    assert isinstance(loaded, Host) and sorted(loaded.reservations) == sorted(vms)
    assert row(pg_target, host.id)[0] == loaded.version
