"""Aggregate snapshots: an aggregate's state at a version, so a cold load
reads the snapshot and the events after it, not every event since the
aggregate was created (a host gets an event per reservation and release).

One row per aggregate in cloudengine_aggregate_snapshots, replaced as the
aggregate grows: taken every SNAPSHOT_EVERY events, written in the same
transaction as the events that reach that version (engine/store.py), so a
snapshot never holds a state the log does not.

A snapshot is used only if its fingerprint is the one the running code
computes for the aggregate's class (`fingerprint`): a digest of the source
of the class's module and of every engine module it draws on (Reservation
in engine/fabric/capacity.py for a host, the base classes...), its
class_version and its `snapshot_version`. Any change to that code makes
every stored snapshot of the class stale; the aggregate is then rebuilt
from its events and a fresh snapshot written. `snapshot_version`
(ClassVar, default 1) is for what the digest cannot see.

The state is the aggregate's attributes (as eventsourcing's Snapshot.take
takes them), pickled, as the read models' snapshots already are; the
unpickler only resolves classes of the engine and of a few standard
modules, so a row cannot name arbitrary code.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, cast
from uuid import UUID

import msgspec
import structlog
from eventsourcing.utils import get_topic, resolve_topic
from psycopg import sql

from cloud_engine.engine.aggregate import Aggregate

log = structlog.get_logger("engine.aggregate_snapshots")

SNAPSHOTS_TABLE = "cloudengine_aggregate_snapshots"
# Every this many events an aggregate's snapshot is replaced: a cold load
# folds at most SNAPSHOT_EVERY - 1 events (17-22 us each) after it.
SNAPSHOT_EVERY = 50
# Where the classes a snapshot may name live.
_ALLOWED_MODULES = ("cloud_engine.", "uuid", "datetime", "decimal", "ipaddress", "builtins")
_ALLOWED_EXACT = {("collections", "OrderedDict"), ("copyreg", "_reconstructor")}
_ENGINE = "cloud_engine.engine"


class SnapshotRow(msgspec.Struct, frozen=True):
    originator_id: UUID
    originator_version: int
    topic: str
    fingerprint: str
    state: bytes


def due(version: int, new_events: int, every: int = SNAPSHOT_EVERY) -> bool:
    """Whether the events that took an aggregate to `version` crossed a
    multiple of `every`."""
    return every > 0 and new_events > 0 and version // every > (version - new_events) // every


_fingerprints: dict[type[Any], str] = {}


def fingerprint(cls: type[Any]) -> str:
    found = _fingerprints.get(cls)
    if found is None:
        digest = hashlib.sha256(get_topic(cls).encode())
        digest.update(
            f"|{getattr(cls, 'class_version', 1)}|{getattr(cls, 'snapshot_version', 1)}".encode()
        )
        for module in sorted(_engine_modules(cls), key=lambda m: m.__name__):
            digest.update(module.__name__.encode())
            digest.update(Path(cast(str, module.__file__)).read_bytes())
        found = _fingerprints[cls] = digest.hexdigest()[:32]
    return found


def _engine_modules(cls: type[Any]) -> set[ModuleType]:
    """The modules of the class and its bases, and every engine module
    they import from, transitively."""
    todo = [sys.modules[c.__module__] for c in cls.__mro__ if c.__module__.startswith(_ENGINE)]
    seen: set[ModuleType] = set()
    while todo:
        module = todo.pop()
        if module in seen or getattr(module, "__file__", None) is None:
            continue
        seen.add(module)
        for value in vars(module).values():
            if inspect.ismodule(value):
                name = value.__name__
            else:
                name = getattr(value, "__module__", None) or ""
            if name.startswith(_ENGINE) and name in sys.modules:
                todo.append(sys.modules[name])
    return seen


def take(aggregate: Aggregate) -> SnapshotRow:
    state = dict(vars(aggregate))
    for kept_apart in ("_id", "_version", "_pending_events"):
        state.pop(kept_apart, None)
    cls = type(aggregate)
    return SnapshotRow(
        originator_id=aggregate.id,
        originator_version=aggregate.version,
        topic=get_topic(cls),
        fingerprint=fingerprint(cls),
        state=pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL),
    )


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_EXACT or any(
            module == m.rstrip(".") or module.startswith(m if m.endswith(".") else f"{m}.")
            for m in _ALLOWED_MODULES
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a snapshot may not name {module}.{name}")


def restore(
    originator_id: UUID, version: int, topic: str, stored_fingerprint: str, state: bytes
) -> Aggregate | None:
    """The aggregate a snapshot holds, or None when it was taken by other
    code (or cannot be read): the caller folds every event instead."""
    try:
        cls = resolve_topic(topic)
        if stored_fingerprint != fingerprint(cls):
            return None
        attributes = _Unpickler(io.BytesIO(state)).load()
    except Exception as error:  # a stale row must never stop a load
        log.warning(
            "aggregate snapshot unreadable, folding every event",
            aggregate_id=str(originator_id),
            error=repr(error),
        )
        return None
    attributes["_id"] = originator_id
    attributes["_version"] = version
    attributes["_pending_events"] = []
    aggregate = object.__new__(cls)
    object.__setattr__(aggregate, "__dict__", attributes)
    return cast(Aggregate, aggregate)


# SQL (psycopg), for the recorder in engine/store.py --------------------------


def create_table_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {table} ("
        " originator_id uuid PRIMARY KEY, originator_version bigint NOT NULL,"
        " topic text NOT NULL, fingerprint text NOT NULL, state bytea NOT NULL,"
        " taken_at timestamptz NOT NULL DEFAULT now())"
    ).format(table=sql.Identifier(schema, SNAPSHOTS_TABLE))


def upsert_sql(schema: str) -> sql.Composed:
    """Replace a row by a later snapshot, or by one of the running code
    (another fingerprint: the row was taken by other code)."""
    return sql.SQL(
        "INSERT INTO {table} AS s (originator_id, originator_version, topic, fingerprint, state)"
        " SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::bytea[])"
        " ON CONFLICT (originator_id) DO UPDATE SET"
        " originator_version = excluded.originator_version, topic = excluded.topic,"
        " fingerprint = excluded.fingerprint, state = excluded.state, taken_at = now()"
        " WHERE s.originator_version < excluded.originator_version"
        " OR s.fingerprint <> excluded.fingerprint"
    ).format(table=sql.Identifier(schema, SNAPSHOTS_TABLE))


def upsert_params(rows: list[SnapshotRow]) -> tuple[list[Any], ...]:
    return (
        [r.originator_id for r in rows],
        [r.originator_version for r in rows],
        [r.topic for r in rows],
        [r.fingerprint for r in rows],
        [r.state for r in rows],
    )


def load_sql(schema: str, events_table: str) -> sql.Composed:
    """Each aggregate's snapshot (fingerprint set) and the events after it
    (fingerprint NULL), in (id, version) order, one round trip. The events
    are read by an index range scan from the snapshot's version (LATERAL:
    the bound is known per aggregate before the scan)."""
    return sql.SQL(
        "SELECT originator_id, originator_version, topic, state, fingerprint FROM {snapshots}"
        " WHERE originator_id = ANY(%(ids)s)"
        " UNION ALL"
        " SELECT r.id, e.originator_version, e.topic, e.state, NULL"
        " FROM unnest(%(ids)s::uuid[]) AS r(id)"
        " LEFT JOIN {snapshots} s ON s.originator_id = r.id"
        " CROSS JOIN LATERAL (SELECT originator_version, topic, state FROM {events}"
        "  WHERE originator_id = r.id"
        "  AND originator_version > coalesce(s.originator_version, 0)) e"
        " ORDER BY 1, 2"
    ).format(
        snapshots=sql.Identifier(schema, SNAPSHOTS_TABLE),
        events=sql.Identifier(schema, events_table),
    )
