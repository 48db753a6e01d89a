"""Where each projection is, and waiting for one to reach a position
(read-your-writes: a command's result carries the position of its last event)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg
import msgspec

from bus.relay_log import RelayLog
from engine.catalog import PUBLIC_BY_CLASS_NAME
from engine.commands.base import AggregateVersion
from projections.readmodel import POSITIONS, table_name


class ProjectionStatus(msgspec.Struct, frozen=True):
    projection: str
    position: int
    lag: int  # events stored but not yet reflected


async def statuses(conn: asyncpg.Connection, schema: str) -> list[ProjectionStatus]:
    latest = await RelayLog(schema, "status").latest(conn)
    rows = await conn.fetch(
        f'SELECT projection, position FROM "{schema}".{POSITIONS} ORDER BY projection'
    )
    return [
        ProjectionStatus(r["projection"], int(r["position"]), max(0, latest - int(r["position"])))
        for r in rows
    ]


class NotYet(TimeoutError):
    """The projection did not reach the position within the bound."""


async def wait_for_position(
    conn: asyncpg.Connection,
    schema: str,
    position: int,
    *,
    projection: str = "aggregates",
    timeout: float = 5.0,
    interval: float = 0.02,
) -> int:
    """Return once the projection's highest applied position reaches
    `position`; NotYet after `timeout`. An approximation across partitions
    (see wait_for_versions for the exact wait)."""
    deadline = time.monotonic() + timeout
    query = f'SELECT position FROM "{schema}".{POSITIONS} WHERE projection = $1'
    while True:
        reached = int(await conn.fetchval(query, projection) or 0)
        if reached >= position:
            return reached
        if time.monotonic() >= deadline:
            raise NotYet(
                f"projection {projection} is at {reached}, not yet at {position} after {timeout}s"
            )
        await asyncio.sleep(interval)


async def wait_for_versions(
    conn: asyncpg.Connection,
    schema: str,
    versions: Sequence[AggregateVersion],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
) -> None:
    """Return once the read models reflect every aggregate version a command
    produced (CommandResult.versions); NotYet after `timeout`.

    This is the exact read-your-writes wait. The projection's position is
    the highest position applied, and the worker applies partitions
    independently, so an event below it may still be on its way: waiting for
    the position alone can return before a write is visible.
    """
    deadline = time.monotonic() + timeout
    pending = list(versions)
    while pending:
        behind = []
        for v in pending:
            table = f'"{schema}".{table_name(PUBLIC_BY_CLASS_NAME[v.type])}'
            seen = await conn.fetchval(f"SELECT version FROM {table} WHERE id = $1", v.id)
            if seen is None or int(seen) < v.version:
                behind.append(v)
        pending = behind
        if not pending:
            return
        if time.monotonic() >= deadline:
            first = pending[0]
            raise NotYet(
                f"read model of {first.type} {first.id} has not reached version"
                f" {first.version} after {timeout}s"
            )
        await asyncio.sleep(interval)
