"""Where each projection is, and waiting for one to reach a position
(read-your-writes: a command's result carries the position of its last event)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec

from bus.relay_log import RelayLog
from projections.readmodel import POSITIONS


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
    """Return once the projection reflects `position`; NotYet after `timeout`."""
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
