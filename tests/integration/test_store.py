"""The event store on a real PostgreSQL: save/load, concurrency, upcasting."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.metadata import EventMeta, bound_meta
from cloud_engine.engine.store import MAX_EVENTS_PER_TRANSACTION, EventStore

pytestmark = pytest.mark.postgres


def test_save_and_load_round_trip_with_metadata(store: EventStore):
    meta = EventMeta(actor="alice", request_id="r1", correlation_id="c1", causation_id="x1")
    with bound_meta(meta):
        zone = Zone.create("zone-a", "first zone")
        zone.disable()
    positions = store.append(zone.collect_events())
    assert positions == sorted(positions) and len(positions) == 2

    loaded = store.load(zone.id)
    assert isinstance(loaded, Zone)
    assert (loaded.name, loaded.state, loaded.version) == ("zone-a", "Disabled", 2)
    events = store.events_of(zone.id)
    assert [e.meta for e in events] == [meta, meta]  # type: ignore[attr-defined]
    assert all(e.timestamp.utcoffset().total_seconds() == 0 for e in events)  # type: ignore[attr-defined]


def test_missing_aggregate_loads_as_none(store: EventStore):
    assert store.load(uuid.uuid4()) is None


def test_optimistic_concurrency_conflict_stores_nothing(store: EventStore, pg_target):
    zone = Zone.create("zone-a")
    store.append(zone.collect_events())
    other = EventStore(pg_target)
    try:
        first = store.load(zone.id)
        second = other.load(zone.id)
        assert isinstance(first, Zone) and isinstance(second, Zone)
        first.disable()
        second.disable()
        store.append(first.collect_events())
        before = store.max_position()
        with pytest.raises(IntegrityError):
            other.append(second.collect_events())
        assert store.max_position() == before
    finally:
        other.close()


def test_batch_with_one_conflict_stores_none_of_it(store: EventStore):
    zone = Zone.create("zone-a")
    store.append(zone.collect_events())
    stale = store.load(zone.id)
    fresh = store.load(zone.id)
    assert isinstance(stale, Zone) and isinstance(fresh, Zone)
    fresh.disable()
    store.append(fresh.collect_events())
    stale.disable()
    new_zone = Zone.create("zone-b")
    with pytest.raises(IntegrityError):
        store.append([*new_zone.collect_events(), *stale.collect_events()])
    assert store.load(new_zone.id) is None


def test_stored_v1_event_is_upcast_on_read(store: EventStore):
    zone_id = uuid.uuid4()
    v1_state = (
        b'{"timestamp":"2025-03-01T10:00:00Z","originator_topic":"engine.fabric.zone:Zone",'
        b'"meta":{"actor":"legacy-import","request_id":"","correlation_id":"","causation_id":""},'
        b'"name":"old-zone","description":"from v1"}'
    )
    store.recorder.insert_events(
        [StoredEvent(zone_id, 1, "engine.fabric.zone:Zone.Created", v1_state)]
    )
    zone = store.load(zone_id)
    assert isinstance(zone, Zone)
    assert zone.network_type == "Advanced"
    assert zone.name == "old-zone"
    # Upcast on read only: the stored row is unchanged.
    assert store.recorder.select_events(zone_id)[0].state == v1_state
    # New events are written as v2.
    created = Zone.create("new-zone", network_type="Basic")
    store.append(created.collect_events())
    assert b'"class_version":2' in store.recorder.select_events(created.id)[0].state


def _append_or_hang(store: EventStore, events: list[StoredEvent], timeout_s: float) -> list[int]:
    result: list[int] = []
    done = threading.Event()

    def insert() -> None:
        result.extend(store.recorder.insert_events(events) or [])
        done.set()

    threading.Thread(target=insert, daemon=True).start()
    if not done.wait(timeout_s):
        # Free the stuck backend, or the schema's teardown would wait on its lock.
        with psycopg.connect(store.target.conninfo(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND datname = current_database()"
                " AND state = 'idle in transaction'"
            )
        pytest.fail(f"inserting {len(events)} events hung for {timeout_s} s")
    return result


def test_multi_megabyte_transaction_commits_instead_of_hanging(store: EventStore):
    # psycopg's pipeline mode hung for good on a transaction this size (the
    # last command queued while the socket's send buffer was full).
    zone = uuid.uuid4()
    events = [
        StoredEvent(originator_id=zone, originator_version=v, topic="t:Big", state=b"x" * 2000)
        for v in range(1, MAX_EVENTS_PER_TRANSACTION + 1)
    ]
    positions = _append_or_hang(store, events, timeout_s=60)
    assert len(positions) == MAX_EVENTS_PER_TRANSACTION
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert store.max_position() == positions[-1]


def test_conflict_in_a_large_transaction_stores_none_of_it(store: EventStore):
    zone = uuid.uuid4()
    first = [StoredEvent(zone, 1, "t:Big", b"x")]
    store.recorder.insert_events(first)
    clash = [StoredEvent(zone, v, "t:Big", b"x" * 2000) for v in range(2, 1500)]
    clash.append(StoredEvent(zone, 1, "t:Big", b"again"))
    before = store.max_position()
    with pytest.raises(IntegrityError):
        store.recorder.insert_events(clash)
    assert store.max_position() == before
    assert [e.originator_version for e in store.recorder.select_events(zone)] == [1]


def test_stores_opened_at_once_on_a_new_schema_all_start(pg_target):
    # up and docker compose start every component together; each opens the
    # store, whose setup creates tables, a type and functions. Unserialised,
    # most of them failed ("tuple concurrently updated", duplicate pg_type).
    errors: list[str] = []
    stores: list[EventStore] = []

    def open_store() -> None:
        try:
            stores.append(EventStore(pg_target, pool_size=1))
        except Exception as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        zone = Zone.create("z")
        stores[0].append(zone.collect_events())
        assert all(isinstance(s.load(zone.id), Zone) for s in stores)
    finally:
        for store in stores:
            store.close()


def test_a_vacuum_on_the_events_table_does_not_hold_up_writers(store: EventStore):
    # VACUUM, ANALYZE and autovacuum hold SHARE UPDATE EXCLUSIVE on the table
    # while they run; a writer taking LOCK TABLE ... IN EXCLUSIVE MODE waited
    # behind them (behind an autovacuum until deadlock_timeout cancelled it).
    table = f'"{store.target.schema}".{store.recorder.events_table_name}'
    zone = Zone.create("zone-a")
    written = threading.Event()
    positions: list[int] = []

    def append() -> None:
        positions.extend(store.append(zone.collect_events()))
        written.set()

    with psycopg.connect(store.target.conninfo()) as vacuum:
        vacuum.execute(f"LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE")
        threading.Thread(target=append, daemon=True).start()
        appended_during_vacuum = written.wait(30)
        vacuum.rollback()
    assert written.wait(30)
    assert appended_during_vacuum, "the write waited for the vacuum's lock"
    assert store.load(zone.id) is not None and len(positions) == 1
