"""The event store: the eventsourcing library's PostgreSQL persistence.

One eventsourcing Application provides the recorder (table cloudengine_events,
optimistic concurrency on (originator_id, originator_version), gap-free global
positions) and our msgspec mapper. The recorder subclass adds the idempotency
table, written in the same transaction as the events it answers for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast
from uuid import UUID

import msgspec
import psycopg
import structlog
from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Mapper,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from eventsourcing.utils import get_topic, retry
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Identifier, Literal

from cloud_engine.engine import aggregate_snapshots as snapshots
from cloud_engine.engine import integrity
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.infra.database import DatabaseTarget, advisory_key
from cloud_engine.infra.tables import EVENTS_TABLE

log = structlog.get_logger("engine.store")

# Bounds how long one transaction holds the events table's write lock (every
# other writer waits on it) and how much one failed batch has to redo.
MAX_EVENTS_PER_TRANSACTION = 2000


class IdempotencyRecord(msgspec.Struct, frozen=True):
    scope: str
    key: str
    command_hash: bytes
    result: bytes


# Builds the idempotency rows once the events' global positions are known, so a
# replayed result carries the same position as the first one.
IdempotencyBuilder = Callable[[Sequence[int]], Sequence[IdempotencyRecord]]


class CloudEngineRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        table = Identifier(events_table_name.removesuffix("_events") + "_idempotency")
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
                " scope text NOT NULL, key text NOT NULL,"
                " command_hash bytea NOT NULL, result bytea NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (scope, key))"
            ).format(schema=schema, table=table)
        )
        self._insert_key = SQL(
            "INSERT INTO {schema}.{table} (scope, key, command_hash, result)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::bytea[])"
        ).format(schema=schema, table=table)
        self._select_keys = SQL(
            "SELECT scope, key, command_hash, result FROM {schema}.{table}"
            " WHERE (scope, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        ).format(schema=schema, table=table)
        # Writers take turns on a transaction-scoped advisory lock, not the
        # library's LOCK TABLE ... IN EXCLUSIVE MODE: it orders them the same
        # way (positions follow commit order), but EXCLUSIVE conflicts with
        # the lock (auto)vacuum and ANALYZE hold on the table, so every write
        # waited behind them: ~1 s per autovacuum of the events table (until
        # deadlock_timeout cancels it), a manual or anti-wraparound VACUUM's
        # whole run. Every insert path of the recorder uses these statements.
        self.lock_table_statements = [
            SQL("SET LOCAL lock_timeout = '{0}s'").format(self.datastore.lock_timeout),
            SQL("SELECT pg_advisory_xact_lock({0})").format(
                Literal(advisory_key(f"events {self.datastore.schema}.{events_table_name}"))
            ),
        ]
        # The lock statements and NOTIFY in one round trip (no parameters,
        # so psycopg sends them as one simple query).
        self._lock_and_notify = SQL("; ").join(
            [
                *self.lock_table_statements,
                SQL("NOTIFY {0}").format(Identifier(self.channel_name)),
            ]
        )
        # Aggregates a transaction read but did not write whose version moved
        # since: another process changed what a decision was based on.
        self._stale_reads = SQL(
            "SELECT r.id FROM unnest(%s::uuid[], %s::bigint[]) AS r(id, version)"
            " WHERE r.version IS DISTINCT FROM (SELECT max(originator_version)"
            " FROM {schema}.{table} WHERE originator_id = r.id) LIMIT 1"
        ).format(schema=schema, table=Identifier(events_table_name))
        self.sql_create_statements.append(snapshots.create_table_sql(self.datastore.schema))
        self._upsert_snapshots = snapshots.upsert_sql(self.datastore.schema)
        self._select_from_snapshots = snapshots.load_sql(self.datastore.schema, events_table_name)
        self._snapshot_query: bytes | None = None
        self._select_many = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table}"
            " WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
        ).format(schema=schema, table=Identifier(events_table_name))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The library's insert, minus psycopg's pipeline mode.

        psycopg 3.3's pipeline loop stops flushing when its last command is
        queued while the socket's send buffer is full, then waits for results
        the server cannot send (it never got the Sync): the writer hangs for
        good, holding the events table's lock. Large transactions and bursts
        of concurrent commands both trigger it. Plain statements cost a few
        loopback round trips more and cannot hang that way.
        """
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            self._insert_events(curs, stored_events, **kwargs)
            if not stored_events:
                return []
            self._insert_stored_events(curs, stored_events, **kwargs)
            return self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        builder: IdempotencyBuilder | None = kwargs.get("idempotency")
        if not stored_events:
            # Nothing to write: checking is enough, no lock needed.
            self._check_reads(curs, kwargs.get("reads") or ())
        if builder is not None and not stored_events:
            self._insert_idempotency(curs, builder(()))
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        # Under the writers' lock every writer that came first has committed and
        # none can come between the read check and the insert.
        curs.execute(self._lock_and_notify)
        self._check_reads(curs, kwargs.get("reads") or ())
        # The aggregate recorder's plain INSERT: the application recorder's
        # own override would take the lock and notify a second time.
        PostgresAggregateRecorder._insert_stored_events(self, curs, stored_events, **kwargs)

    def upsert_snapshots(self, curs: Cursor[DictRow], rows: list[snapshots.SnapshotRow]) -> None:
        if rows:
            curs.execute(self._upsert_snapshots, snapshots.upsert_params(rows))

    def _check_reads(self, curs: Cursor[DictRow], reads: Sequence[tuple[UUID, int]]) -> None:
        if not reads:
            return
        curs.execute(self._stale_reads, ([r[0] for r in reads], [r[1] for r in reads]))
        stale = curs.fetchone()
        if stale is not None:
            raise IntegrityError(f"aggregate {stale['id']} changed since it was read")

    def _fetch_ids_after_insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        # With the events that reach their versions (once the cursor gave
        # their positions): a snapshot never holds a state the log does not.
        self.upsert_snapshots(curs, kwargs.get("snapshots") or [])
        builder: IdempotencyBuilder | None = kwargs.get("idempotency")
        if builder is not None:
            self._insert_idempotency(curs, builder(ids or ()))
        return ids

    def _insert_idempotency(
        self, curs: Cursor[DictRow], records: Sequence[IdempotencyRecord]
    ) -> None:
        if records:
            # One statement: psycopg's executemany runs in pipeline mode.
            curs.execute(
                self._insert_key,
                (
                    [r.scope for r in records],
                    [r.key for r in records],
                    [r.command_hash for r in records],
                    [r.result for r in records],
                ),
            )

    def select_idempotency(self, keys: Sequence[tuple[str, str]]) -> list[IdempotencyRecord]:
        if not keys:
            return []
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_keys, ([k[0] for k in keys], [k[1] for k in keys]))
            return [
                IdempotencyRecord(
                    r["scope"], r["key"], bytes(r["command_hash"]), bytes(r["result"])
                )
                for r in curs.fetchall()
            ]

    def select_from_snapshots(self, ids: Sequence[UUID]) -> list[tuple[Any, ...]]:
        """(id, version, topic, state, fingerprint) rows: each aggregate's
        snapshot (fingerprint set) and the events after it, in order."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            if self._snapshot_query is None:
                # Composed once: composing it costs more than running it.
                self._snapshot_query = self._select_from_snapshots.as_bytes(conn)
            curs.execute(self._snapshot_query, {"ids": list(ids)}, prepare=True)
            return curs.fetchall()

    def save_snapshots(self, rows: list[snapshots.SnapshotRow]) -> None:
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self.upsert_snapshots(curs, rows)

    def select_events_of(self, ids: Sequence[UUID]) -> list[StoredEvent]:
        """Every event of several aggregates in one round trip."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_many, (list(ids),), prepare=True)
            return [
                StoredEvent(
                    originator_id=r["originator_id"],
                    originator_version=r["originator_version"],
                    topic=r["topic"],
                    state=bytes(r["state"]),
                )
                for r in curs.fetchall()
            ]


class _StoreApplication(Application[UUID]):
    name = "CloudEngine"

    def construct_mapper(self) -> Mapper[UUID]:
        return MsgspecMapper()


def store_environment(target: DatabaseTarget, pool_size: int) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": target.dbname,
        "POSTGRES_HOST": target.host,
        "POSTGRES_PORT": str(target.port),
        "POSTGRES_USER": target.user,
        "POSTGRES_PASSWORD": target.password,
        "POSTGRES_SCHEMA": target.schema,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "4",
        "APPLICATION_RECORDER_TOPIC": get_topic(CloudEngineRecorder),
        "CREATE_TABLE": "y",
    }


class EventStore:
    """Load aggregates and append events; the only door to the log."""

    def __init__(self, target: DatabaseTarget, *, pool_size: int = 4) -> None:
        self.target = target
        # Components started together (up, compose) would otherwise race on
        # the library's CREATE TABLE / TYPE / OR REPLACE FUNCTION statements
        # ("tuple concurrently updated", duplicate pg_type keys): one at a time.
        with psycopg.connect(target.conninfo(), autocommit=True) as lock:
            lock.execute(
                "SELECT pg_advisory_lock(%s)", (advisory_key(f"store setup {target.schema}"),)
            )
            self.application = _StoreApplication(env=store_environment(target, pool_size))
            self.recorder = cast(CloudEngineRecorder, self.application.recorder)
            # The library names the table after the application; every other
            # reader names it from infra.tables.
            if self.recorder.events_table_name != EVENTS_TABLE:
                raise RuntimeError(
                    f"the event store's table is {self.recorder.events_table_name},"
                    f" not {EVENTS_TABLE} as infra.tables says"
                )
            self.mapper = self.application.mapper
            with self.recorder.datastore.get_connection() as conn:
                integrity.install(conn, target.schema, self.recorder.events_table_name)

    def close(self) -> None:
        self.application.close()

    def events_of(self, aggregate_id: UUID) -> list[DomainEventProtocol[UUID]]:
        return list(self.application.events.get(aggregate_id))

    def load(self, aggregate_id: UUID) -> Aggregate | None:
        return self.load_many([aggregate_id]).get(aggregate_id)

    def load_many(self, ids: Iterable[UUID]) -> dict[UUID, Aggregate]:
        """The aggregates' current states: from each one's snapshot and the
        events after it; from every event when it has none, or one the
        running code did not take (then a fresh one is written)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        loaded: dict[UUID, Aggregate] = {}
        stale: set[UUID] = set()
        decode = cast(MsgspecMapper, self.mapper).decode
        rows = self.recorder.select_from_snapshots(wanted)
        for aggregate_id, version, topic, state, fingerprint in rows:
            if fingerprint is not None:
                restored = snapshots.restore(aggregate_id, version, topic, fingerprint, state)
                if restored is None:
                    stale.add(aggregate_id)
                else:
                    loaded[aggregate_id] = restored
                continue
            if aggregate_id in stale:
                continue
            event = decode(aggregate_id, version, topic, state)
            current = loaded.get(aggregate_id)
            loaded[aggregate_id] = cast(Aggregate, event.mutate(current))  # type: ignore[attr-defined]
        if stale:
            rebuilt = self.load_from_events(stale)
            loaded.update(rebuilt)
            self._resnapshot(list(rebuilt.values()))
        return loaded

    def load_from_events(self, ids: Iterable[UUID]) -> dict[UUID, Aggregate]:
        """Every event of each aggregate folded, no snapshot used."""
        loaded: dict[UUID, Aggregate] = {}
        for stored in self.recorder.select_events_of(list(ids)):
            event = self.mapper.to_domain_event(stored)
            current = loaded.get(event.originator_id)
            loaded[event.originator_id] = cast(Aggregate, event.mutate(current))  # type: ignore[attr-defined]
        return loaded

    def _resnapshot(self, aggregates: list[Aggregate]) -> None:
        """Replace snapshots other code took by ones of this code (the
        states just folded from the log). Best effort: the next load
        rebuilds again if this fails."""
        rows = _snapshot_rows(aggregates)
        try:
            self.recorder.save_snapshots(rows)
        except Exception as error:
            log.warning("could not replace stale aggregate snapshots", error=repr(error))
        else:
            log.info("aggregate snapshots rebuilt from events", aggregates=len(rows))

    def append(
        self,
        events: Sequence[DomainEventProtocol[UUID]],
        idempotency: IdempotencyBuilder | None = None,
        reads: Sequence[tuple[UUID, int]] = (),
        snapshot: Sequence[Aggregate] = (),
    ) -> list[int]:
        """Store events atomically; return their global positions in order.

        Raises eventsourcing's IntegrityError when any (aggregate, version) is
        already taken (an optimistic-concurrency conflict) or an idempotency
        key was recorded meanwhile; nothing is stored then.
        """
        if len(events) > MAX_EVENTS_PER_TRANSACTION:
            raise ValueError(
                f"{len(events)} events in one transaction; at most {MAX_EVENTS_PER_TRANSACTION}"
            )
        stored = [self.mapper.to_stored_event(e) for e in events]
        ids = self.recorder.insert_events(
            stored, idempotency=idempotency, reads=reads, snapshots=_snapshot_rows(snapshot)
        )
        return list(ids or [])

    def reads_current(self, reads: Sequence[tuple[UUID, int]]) -> bool:
        """Whether every (aggregate, version) read is still the latest."""
        try:
            self.recorder.insert_events([], reads=reads)
        except IntegrityError:
            return False
        return True

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0


def _snapshot_rows(aggregates: Iterable[Aggregate]) -> list[snapshots.SnapshotRow]:
    rows = []
    for aggregate in aggregates:
        try:
            rows.append(snapshots.take(aggregate))
        except Exception as error:  # an unpicklable state must not stop a write
            log.warning(
                "could not snapshot an aggregate", aggregate_id=str(aggregate.id), error=repr(error)
            )
    return rows
