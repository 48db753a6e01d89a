"""Read models: one table per aggregate type, derived from events.

Rows are computed by the domain's own aggregates: an event is applied to the
aggregate rebuilt from the row's snapshot, so a read model can never disagree
with what the engine decided. Each row records the aggregate version it
reflects (an event at or below it is a duplicate and skipped), and the
projection's position is written in the same transaction as its rows, so a
crash can neither lose nor double-apply an event.

Columns: id, version, position (global position of the last event applied),
state, name, account, zone_id, created_on, modified_on, data (the public
state as JSON: attributes and derived properties such as a host's free
capacity) and snapshot (the aggregate, to apply the next event to). A
snapshot is a cache: a rebuild leaves it out for short histories (pickling
costs more than folding a few events again), and the applier then refolds
the aggregate from the log, up to the row's version, the first time it
needs it.

Indexes: besides the key, each table has (created_on, id) and one
(filter, created_on, id) per filter its list endpoint takes (LIST_KEYS), so
a filtered page in keyset order reads about a page of index entries however
many rows the table has; the effectors' lookups have theirs (LOOKUP_KEYS).
A rebuild builds them on its shadow tables after the bulk load
(projections.replay).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from eventsourcing.utils import get_topic

from cloud_engine.bus.naming import event_type_of
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.catalog import AGGREGATES, PUBLIC_NAMES
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.infra.database import advisory_key
from cloud_engine.infra.tables import events_table, positions_table, table_name
from cloud_engine.projections.history import state_view

COLUMNS = (
    "id",
    "version",
    "position",
    "state",
    "name",
    "account",
    "zone_id",
    "created_on",
    "modified_on",
    "data",
    "snapshot",
)

# A connection of its own or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


class _Unpickler(pickle.Unpickler):
    """Snapshots written before the layers were installed under cloud_engine
    name their classes engine.x.Y: found under the package now."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "engine" or module.startswith("engine."):
            module = f"cloud_engine.{module}"
        return super().find_class(module, name)


def load_snapshot(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


# What the list endpoints (api/resources.py) filter on, by equality, per read
# model; tests/integration/test_readmodel_indexes.py checks this against the
# API's filters. Columns by name; anything else is a field of data, indexed
# as the text the API compares it with (data ->> 'field'). Tables of
# resources owned through a parent (NICs, IP addresses, rules, snapshots)
# have no account of their own: the API finds it by joining the parent.
COLUMN_KEYS = frozenset({"state", "name", "zone_id", "account"})
_PLACED = ("state", "name", "zone_id")
LIST_KEYS: dict[str, tuple[str, ...]] = {
    "zone": ("state", "name"),
    "pod": _PLACED,
    "cluster": (*_PLACED, "pod_id"),
    "host": (*_PLACED, "pod_id", "cluster_id"),
    "storage_pool": (*_PLACED, "cluster_id"),
    "image_store": _PLACED,
    "physical_network": _PLACED,
    "template": (*_PLACED, "format"),
    "vm": (*_PLACED, "account", "host_id", "template_id", "iso_id"),
    "volume": (*_PLACED, "account", "vm_id", "pool_id"),
    "snapshot": ("state", "name", "volume_id"),
    "network": (*_PLACED, "account", "physical_network_id"),
    "nic": ("state", "vm_id", "network_id"),
    "ip_address": ("state", "network_id", "owner_id"),
    "network_rule": ("state", "network_id"),
    "operation": ("state", "account", "kind", "resource_id"),
}
# What the effectors and their reconciler also look rows up by (through
# effectors.desired, which refuses a key with no index): the VMs a host ran
# or is receiving.
LOOKUP_KEYS: dict[str, tuple[str, ...]] = {"vm": ("last_host_id", "migration_target_id")}


def key_sql(key: str) -> str:
    """A key as its index has it: a column, or the text of a data field."""
    return key if key in COLUMN_KEYS else f"(data ->> '{key}')"


def key_value(key: str, value: object) -> object:
    """A value to compare with key_sql(key): data fields are text."""
    return value if key in COLUMN_KEYS else str(value)


def indexed_keys(aggregate_type: str) -> tuple[str, ...]:
    return (*LIST_KEYS.get(aggregate_type, ()), *LOOKUP_KEYS.get(aggregate_type, ()))


@dataclass(frozen=True)
class Index:
    suffix: str  # the index is named <table>_<suffix>
    keys: str  # SQL: the key expressions


def indexes(aggregate_type: str) -> list[Index]:
    """The secondary indexes of a read model (the key is not among them)."""
    found = [Index("by_created", "created_on, id")]
    for key in indexed_keys(aggregate_type):
        found.append(Index(f"by_{key}", f"{key_sql(key)}, created_on, id"))
    return found


def create_index_sql(schema: str, table: str, index: Index) -> str:
    return f'CREATE INDEX IF NOT EXISTS {table}_{index.suffix} ON "{schema}".{table} ({index.keys})'


def create_table_sql(schema: str, table: str, *, key: bool = True) -> str:
    # A rebuild creates its shadow tables without the key and adds it after
    # the bulk load (one index build instead of a million inserts into it).
    return (
        f'CREATE TABLE IF NOT EXISTS "{schema}".{table} ('
        f" id uuid{' PRIMARY KEY' if key else ''} NOT NULL,"
        " version bigint NOT NULL, position bigint NOT NULL,"
        " state text, name text, account text, zone_id uuid,"
        " created_on timestamptz NOT NULL, modified_on timestamptz NOT NULL,"
        " data jsonb NOT NULL, snapshot bytea)"
    )


async def prepare(conn: Conn, schema: str) -> None:
    """Create what is missing: tables, columns made optional, indexes."""
    async with conn.transaction():
        # The API, the worker and the CLI may all start at once: without the
        # lock, two CREATE ... IF NOT EXISTS of one name can still collide.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", advisory_key(f"readmodel.prepare {schema}")
        )
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {positions_table(schema)} ("
            " projection text PRIMARY KEY, position bigint NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )
        for aggregate_type in AGGREGATES:
            await conn.execute(create_table_sql(schema, table_name(aggregate_type)))
        # Tables made before snapshots became optional (altered only when
        # needed: ALTER TABLE locks the table even when it changes nothing).
        for row in await conn.fetch(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = $1"
            " AND column_name = 'snapshot' AND is_nullable = 'NO' AND table_name LIKE 'rm\\_%'",
            schema,
        ):
            await conn.execute(
                f'ALTER TABLE "{schema}".{row["table_name"]} ALTER COLUMN snapshot DROP NOT NULL'
            )
        # Indexes missing from tables made before they existed. Checked
        # first because CREATE INDEX IF NOT EXISTS takes the table's lock
        # (blocking the worker's writes) before it finds the index there.
        present = {
            r["indexname"]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema
            )
        }
        for aggregate_type in AGGREGATES:
            table = table_name(aggregate_type)
            for index in indexes(aggregate_type):
                if f"{table}_{index.suffix}" not in present:
                    await conn.execute(create_index_sql(schema, table, index))


@dataclass
class Row:
    aggregate: Aggregate
    position: int

    def values(self, snapshot: bool = True) -> tuple[Any, ...]:
        a = self.aggregate
        view = state_view(a)
        zone = getattr(a, "zone_id", None)
        return (
            a.id,
            a.version,
            self.position,
            _text(getattr(a, "state", None)),
            _text(getattr(a, "name", None)),
            _text(getattr(a, "account", None)),
            zone if isinstance(zone, UUID) else None,
            view.created_on,
            view.modified_on,
            bytes(view.attributes).decode(),
            pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL) if snapshot else None,
        )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


Positioned = tuple[int, Any]  # (global position, domain event)


class Applier:
    """Applies events to the rows of one schema's read models."""

    def __init__(self, schema: str, projection: str = "aggregates", suffix: str = "") -> None:
        self.schema = schema
        self.projection = projection
        self.suffix = suffix
        self.events = events_table(schema)
        self.mapper = MsgspecMapper()

    def _table(self, aggregate_type: str) -> str:
        return f'"{self.schema}".{table_name(aggregate_type, self.suffix)}'

    async def position(self, conn: Conn) -> int:
        value = await conn.fetchval(
            f"SELECT position FROM {positions_table(self.schema)} WHERE projection = $1",
            self.projection,
        )
        return int(value or 0)

    async def apply(self, conn: Conn, events: Sequence[Positioned]) -> int:
        """Apply events (in position order) in the caller's transaction;
        return how many were new. The position moves to the last one."""
        if not events:
            return 0
        ids: dict[str, set[UUID]] = {}
        for _, event in events:
            ids.setdefault(_type_of_event(event), set()).add(event.originator_id)
        current: dict[UUID, Row] = {}
        unsnapshotted: dict[UUID, tuple[int, int]] = {}
        for aggregate_type, wanted in ids.items():
            rows = await conn.fetch(
                f"SELECT id, version, position, snapshot FROM {self._table(aggregate_type)}"
                " WHERE id = ANY($1::uuid[]) FOR UPDATE",
                list(wanted),
            )
            for r in rows:
                if r["snapshot"] is None:
                    unsnapshotted[r["id"]] = (int(r["version"]), int(r["position"]))
                else:
                    current[r["id"]] = Row(load_snapshot(r["snapshot"]), int(r["position"]))
        if unsnapshotted:
            current.update(await self._refold(conn, unsnapshotted))
        changed: dict[UUID, Row] = {}
        applied = 0
        for position, event in events:
            row = current.get(event.originator_id)
            if row is not None and event.originator_version <= row.aggregate.version:
                continue  # already reflected: a redelivery or a replay overlap
            aggregate = event.mutate(None if row is None else row.aggregate)
            row = current[event.originator_id] = Row(aggregate, position)
            changed[event.originator_id] = row
            applied += 1
        for aggregate_type in ids:
            batch = [
                r.values() for r in changed.values() if _type_of(r.aggregate) == aggregate_type
            ]
            if batch:
                await _upsert(conn, self._table(aggregate_type), batch)
        await conn.execute(
            f"INSERT INTO {positions_table(self.schema)} (projection, position) VALUES ($1, $2)"
            " ON CONFLICT (projection) DO UPDATE SET position ="
            f" GREATEST({positions_table(self.schema)}.position, EXCLUDED.position),"
            " updated_at = now()",
            self.projection,
            max(position for position, _ in events),
        )
        return applied

    async def _refold(self, conn: Conn, rows: dict[UUID, tuple[int, int]]) -> dict[UUID, Row]:
        """Aggregates of rows stored without a snapshot, folded from the log up
        to the version each row reflects."""
        records = await conn.fetch(
            "SELECT originator_id, originator_version, topic, state"
            f" FROM {self.events} WHERE originator_id = ANY($1::uuid[])"
            " ORDER BY originator_id, originator_version",
            list(rows),
        )
        aggregates: dict[UUID, Any] = {}
        for r in records:
            aggregate_id, version = r["originator_id"], int(r["originator_version"])
            if version > rows[aggregate_id][0]:
                continue
            event: Any = self.mapper.decode(aggregate_id, version, r["topic"], r["state"])
            aggregates[aggregate_id] = event.mutate(aggregates.get(aggregate_id))
        return {i: Row(a, rows[i][1]) for i, a in aggregates.items()}


# Every column but the key and the creation time changes with an event.
_UPSERT = (
    "INSERT INTO {table} ("
    + ", ".join(COLUMNS)
    + ") VALUES ("
    + ", ".join(f"${i}::jsonb" if c == "data" else f"${i}" for i, c in enumerate(COLUMNS, 1))
    + ") ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c not in ("id", "created_on"))
)


async def _upsert(conn: Conn, table: str, rows: Iterable[tuple[Any, ...]]) -> None:
    await conn.executemany(_UPSERT.format(table=table), list(rows))


def _type_of(aggregate: Aggregate) -> str:
    return PUBLIC_NAMES[type(aggregate)]


def _type_of_event(event: Any) -> str:
    return event_type_of(get_topic(type(event))).aggregate
