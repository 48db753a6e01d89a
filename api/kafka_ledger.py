"""The Kafka gateway's memory of answered commands, in PostgreSQL.

One row per command, keyed by what identifies it across deliveries: its
ce_source and ce_id (unique per producer, as CloudEvents requires) and the
SHA-256 of the token it came with, so nobody without the token can take an
id before its owner's command arrives. The answer is written here before
it is published and marked published once the broker has it, so:

- a redelivery of a command already answered is not answered again;
- one answered but not published (the gateway died in between) is
  published then, with the answer first recorded, not a new one;
- a command executed but not answered at all (the gateway died before
  this row) runs again and the engine's idempotency key, ce_id, gives back
  the first result: executed once, answered once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from cloud_engine.infra.ddl import create_once

TABLE = "cloudengine_kafka_commands"

Conn = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


class Key(msgspec.Struct, frozen=True):
    source: str
    id: str
    token_sha256: bytes

    @classmethod
    def of(cls, source: str, command_id: str, token: str) -> Key:
        return cls(source, command_id, hashlib.sha256(token.encode()).digest())


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    key: Key
    command_type: str
    status: int
    value: bytes
    published: bool = False


def table(schema: str) -> str:
    return f'"{schema}".{TABLE}'


async def prepare(conn: asyncpg.Connection | PoolConnectionProxy, schema: str) -> None:
    await create_once(
        conn,
        f"CREATE TABLE IF NOT EXISTS {table(schema)} ("
        " source text NOT NULL,"
        " id text NOT NULL,"
        " token_sha256 bytea NOT NULL,"
        " command_type text NOT NULL,"
        " status integer NOT NULL,"
        " answer bytea NOT NULL,"
        " published boolean NOT NULL DEFAULT false,"
        " answered_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (source, id, token_sha256))",
    )


async def find(conn: Conn, schema: str, keys: Sequence[Key]) -> dict[Key, Answer]:
    """The recorded answers among `keys`, in one query."""
    if not keys:
        return {}
    rows = await conn.fetch(
        f"SELECT t.source, t.id, t.token_sha256, command_type, status, answer, published"
        f" FROM {table(schema)} t"
        " JOIN unnest($1::text[], $2::text[], $3::bytea[]) AS k(source, id, token_sha256)"
        " USING (source, id, token_sha256)",
        [k.source for k in keys],
        [k.id for k in keys],
        [k.token_sha256 for k in keys],
    )
    found = {}
    for row in rows:
        key = Key(row["source"], row["id"], bytes(row["token_sha256"]))
        found[key] = Answer(
            key=key,
            command_type=row["command_type"],
            status=row["status"],
            value=bytes(row["answer"]),
            published=row["published"],
        )
    return found


async def record(conn: Conn, schema: str, answers: Sequence[Answer]) -> dict[Key, Answer]:
    """Record answers not recorded yet; returns the answer recorded for each
    key (another gateway's, if it recorded one first)."""
    if answers:
        await conn.execute(
            f"INSERT INTO {table(schema)}"
            " (source, id, token_sha256, command_type, status, answer)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[],"
            " $5::int[], $6::bytea[]) ON CONFLICT DO NOTHING",
            [a.key.source for a in answers],
            [a.key.id for a in answers],
            [a.key.token_sha256 for a in answers],
            [a.command_type for a in answers],
            [a.status for a in answers],
            [a.value for a in answers],
        )
    return await find(conn, schema, [a.key for a in answers])


async def mark_published(conn: Conn, schema: str, keys: Sequence[Key]) -> None:
    if keys:
        await conn.execute(
            f"UPDATE {table(schema)} t SET published = true"
            " FROM unnest($1::text[], $2::text[], $3::bytea[]) AS k(source, id, token_sha256)"
            " WHERE t.source = k.source AND t.id = k.id AND t.token_sha256 = k.token_sha256",
            [k.source for k in keys],
            [k.id for k in keys],
            [k.token_sha256 for k in keys],
        )
