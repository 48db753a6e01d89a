"""A tamper-evident log: every event is hashed into two chains.

- aggregate_hash = sha256(previous aggregate_hash of the same aggregate
  (32 zero bytes for version 1) || aggregate id (16 bytes) || version (8 bytes,
  big-endian) || topic (UTF-8) || state)
- chain_hash = sha256(previous row's chain_hash in position order (zeros for
  the first) || position (8 bytes) || aggregate_hash)

A trigger computes both while the event row is inserted, inside the writer's
transaction and under the event table's exclusive lock, so the global chain
follows commit order. `verify` recomputes everything from the rows and names
every event whose content (edited), predecessor (deleted, inserted, reordered)
or version sequence does not match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from uuid import UUID

import msgspec
from psycopg import Connection
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

ZERO = bytes(32)


def trigger_sql(schema: str, table: str) -> list[SQL | object]:
    s, t = Identifier(schema), Identifier(table)
    fn = Identifier(f"{table}_hash")
    return [
        SQL("ALTER TABLE {s}.{t} ADD COLUMN IF NOT EXISTS aggregate_hash bytea").format(s=s, t=t),
        SQL("ALTER TABLE {s}.{t} ADD COLUMN IF NOT EXISTS chain_hash bytea").format(s=s, t=t),
        SQL(
            "CREATE OR REPLACE FUNCTION {s}.{fn}() RETURNS trigger LANGUAGE plpgsql AS $$"
            " DECLARE prev_agg bytea; prev_chain bytea;"
            " BEGIN"
            "  SELECT aggregate_hash INTO prev_agg FROM {s}.{t}"
            "   WHERE originator_id = NEW.originator_id"
            "   AND originator_version = NEW.originator_version - 1;"
            "  NEW.aggregate_hash := sha256(coalesce(prev_agg, '\\x{zero}'::bytea)"
            "   || uuid_send(NEW.originator_id) || int8send(NEW.originator_version)"
            "   || convert_to(NEW.topic, 'UTF8') || NEW.state);"
            "  SELECT chain_hash INTO prev_chain FROM {s}.{t}"
            "   ORDER BY notification_id DESC LIMIT 1;"
            "  NEW.chain_hash := sha256(coalesce(prev_chain, '\\x{zero}'::bytea)"
            "   || int8send(NEW.notification_id) || NEW.aggregate_hash);"
            "  RETURN NEW;"
            " END $$"
        ).format(s=s, t=t, fn=fn, zero=SQL(ZERO.hex())),
        SQL(
            "CREATE OR REPLACE TRIGGER {name} BEFORE INSERT ON {s}.{t}"
            " FOR EACH ROW EXECUTE FUNCTION {s}.{fn}()"
        ).format(name=Identifier(f"{table}_hash"), s=s, t=t, fn=fn),
    ]


def install(conn: Connection[DictRow], schema: str, table: str) -> None:
    # ALTER TABLE takes an exclusive lock even when nothing changes, so a
    # process starting beside busy writers only runs it when the trigger is new.
    present = conn.execute(
        "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND t.tgname = %s",
        (schema, table, f"{table}_hash"),
    ).fetchone()
    if present is not None:
        return
    with conn.transaction():
        for statement in trigger_sql(schema, table):
            conn.execute(statement)  # type: ignore[arg-type]


def aggregate_hash(
    prev: bytes, aggregate_id: UUID, version: int, topic: str, state: bytes
) -> bytes:
    version_bytes = version.to_bytes(8, "big", signed=True)
    return hashlib.sha256(
        prev + aggregate_id.bytes + version_bytes + topic.encode() + state
    ).digest()


def chain_hash(prev: bytes, position: int, agg_hash: bytes) -> bytes:
    return hashlib.sha256(prev + position.to_bytes(8, "big", signed=True) + agg_hash).digest()


class Finding(msgspec.Struct, frozen=True):
    position: int
    aggregate_id: str
    version: int
    problem: str


class Report(msgspec.Struct, frozen=True):
    checked: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


def verify(conn: Connection[DictRow], schema: str, table: str, page: int = 10_000) -> Report:
    """Recompute both chains over the whole log; name every broken event."""
    findings: list[Finding] = []
    last_hash: dict[UUID, tuple[int, bytes]] = {}
    prev_chain = ZERO
    checked = 0
    for row in _rows(conn, schema, table, page):
        checked += 1
        position = int(row["notification_id"])
        aggregate_id: UUID = row["originator_id"]
        version = int(row["originator_version"])
        stored_agg = bytes(row["aggregate_hash"] or b"")
        stored_chain = bytes(row["chain_hash"] or b"")

        def found(
            problem: str, p: int = position, a: UUID = aggregate_id, v: int = version
        ) -> None:
            findings.append(Finding(p, str(a), v, problem))

        previous = last_hash.get(aggregate_id)
        expected_version = 1 if previous is None else previous[0] + 1
        if version != expected_version:
            found(
                f"version {version} follows version {expected_version - 1}: "
                "an event of this aggregate is missing or out of order"
            )
        if version == expected_version:
            # (Without its predecessor an event's content cannot be checked;
            # the missing version is reported above.)
            prev_agg = ZERO if previous is None else previous[1]
            state = bytes(row["state"])
            expected = aggregate_hash(prev_agg, aggregate_id, version, row["topic"], state)
            if expected != stored_agg:
                found("content does not match its hash: the event was edited")
        if chain_hash(prev_chain, position, stored_agg) != stored_chain:
            found(
                "global chain broken before this event: an event was deleted, inserted or "
                "reordered before it, or this row's hashes were altered"
            )
        last_hash[aggregate_id] = (version, stored_agg)
        prev_chain = stored_chain
    return Report(checked=checked, findings=tuple(findings))


def _rows(conn: Connection[DictRow], schema: str, table: str, page: int) -> Iterator[DictRow]:
    query = SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state,"
        " aggregate_hash, chain_hash FROM {s}.{t} WHERE notification_id > %s"
        " ORDER BY notification_id LIMIT %s"
    ).format(s=Identifier(schema), t=Identifier(table))
    after = 0
    while True:
        rows = conn.execute(query, (after, page)).fetchall()
        if not rows:
            return
        yield from rows
        after = int(rows[-1]["notification_id"])


class Head(msgspec.Struct, frozen=True):
    """The newest event's position and chain hash: keep it to check later
    that the log up to there was not rewritten."""

    position: int
    chain_hash: str

    def __str__(self) -> str:
        return f"{self.position}:{self.chain_hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        position, _, digest = text.partition(":")
        if not position.isdigit() or len(digest) != 64:
            raise ValueError(f"a head looks like <position>:<64 hex digits>, not {text!r}")
        return cls(int(position), digest.lower())


def head(conn: Connection[DictRow], schema: str, table: str) -> Head | None:
    row = conn.execute(
        SQL(
            "SELECT notification_id, chain_hash FROM {s}.{t} ORDER BY notification_id DESC LIMIT 1"
        ).format(s=Identifier(schema), t=Identifier(table))
    ).fetchone()
    if row is None:
        return None
    return Head(int(row["notification_id"]), bytes(row["chain_hash"] or b"").hex())


def check_head(conn: Connection[DictRow], schema: str, table: str, kept: Head) -> Finding | None:
    """A finding if the log no longer holds the kept head at its position."""
    row = conn.execute(
        SQL(
            "SELECT originator_id, originator_version, chain_hash FROM {s}.{t}"
            " WHERE notification_id = %s"
        ).format(s=Identifier(schema), t=Identifier(table)),
        (kept.position,),
    ).fetchone()
    if row is None:
        return Finding(kept.position, "", 0, "the kept head's event is gone")
    if bytes(row["chain_hash"] or b"").hex() != kept.chain_hash:
        return Finding(
            kept.position,
            str(row["originator_id"]),
            int(row["originator_version"]),
            "chain hash differs from the kept head: the log up to here was rewritten",
        )
    return None
