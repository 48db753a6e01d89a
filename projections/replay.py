"""Rebuild the read models from the event store (not from Kafka).

The rebuild reads the log page by page, applies every event to aggregates in
memory (no row writes per event), COPYs the rows into shadow tables, then
catches up with what was written meanwhile and swaps the shadow tables in,
all in one transaction that holds the projection's position row, so the live
worker waits for the swap instead of writing to a table being replaced. Reads
keep being served from the old tables until the swap commits.

Memory grows with the number of aggregates, not of events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import StoredEvent

from bus.relay_log import RelayLog
from engine.aggregate import Aggregate
from engine.catalog import AGGREGATES, PUBLIC_NAMES
from engine.mapper import MsgspecMapper
from projections.readmodel import POSITIONS, Row, create_table_sql, table_name

PAGE = 10_000
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


@dataclass
class Progress:
    events: int = 0
    position: int = 0
    target: int = 0
    started: float = 0.0

    @property
    def per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.events / elapsed if elapsed > 0 else 0.0


ProgressHook = Callable[[Progress], None]


class Rebuild:
    def __init__(self, schema: str, projection: str = "aggregates") -> None:
        self.schema = schema
        self.projection = projection
        self.log = RelayLog(schema, "replay")
        self.mapper = MsgspecMapper()
        self.aggregates: dict[UUID, Aggregate] = {}
        self.positions: dict[UUID, int] = {}

    def _apply(self, rows: list[asyncpg.Record]) -> None:
        for r in rows:
            event: Any = self.mapper.to_domain_event(
                StoredEvent(r["originator_id"], r["originator_version"], r["topic"], r["state"])
            )
            current = self.aggregates.get(event.originator_id)
            self.aggregates[event.originator_id] = event.mutate(current)
            self.positions[event.originator_id] = int(r["notification_id"])

    async def _read(
        self,
        conn: asyncpg.Connection,
        after: int,
        until: int,
        progress: Progress,
        hook: ProgressHook | None,
    ) -> int:
        while after < until:
            rows = await self.log.read(conn, after, PAGE)
            rows = [r for r in rows if int(r["notification_id"]) <= until]
            if not rows:
                break
            self._apply(rows)
            after = int(rows[-1]["notification_id"])
            progress.events += len(rows)
            progress.position = after
            if hook is not None:
                hook(progress)
        return after

    async def run(
        self,
        conn: asyncpg.Connection,
        *,
        to_position: int | None = None,
        hook: ProgressHook | None = None,
    ) -> Progress:
        latest = int(
            await conn.fetchval(f"SELECT coalesce(max(notification_id), 0) FROM {self.log.events}")
        )
        until = latest if to_position is None else min(to_position, latest)
        progress = Progress(target=until, started=time.monotonic())
        position = await self._read(conn, 0, until, progress, hook)
        for aggregate_type in AGGREGATES:
            shadow = table_name(aggregate_type, "_shadow")
            await conn.execute(f'DROP TABLE IF EXISTS "{self.schema}".{shadow}')
            await conn.execute(create_table_sql(self.schema, shadow))
        async with conn.transaction():
            # Blocks the live worker (it updates this row in each of its
            # transactions) until the new tables are in place.
            await conn.execute(
                f'INSERT INTO "{self.schema}".{POSITIONS} (projection, position) VALUES ($1, 0)'
                " ON CONFLICT (projection) DO NOTHING",
                self.projection,
            )
            await conn.fetchval(
                f'SELECT position FROM "{self.schema}".{POSITIONS}'
                " WHERE projection = $1 FOR UPDATE",
                self.projection,
            )
            if to_position is None:
                # Catch up with what was committed during the rebuild.
                latest = await self.log.latest(conn)
                position = await self._read(conn, position, latest, progress, hook)
                progress.target = latest
            await self._copy_rows(conn)
            for aggregate_type in AGGREGATES:
                live = table_name(aggregate_type)
                shadow = table_name(aggregate_type, "_shadow")
                await conn.execute(f'DROP TABLE IF EXISTS "{self.schema}".{live}')
                await conn.execute(f'ALTER TABLE "{self.schema}".{shadow} RENAME TO {live}')
            await conn.execute(
                f'UPDATE "{self.schema}".{POSITIONS} SET position = $2, updated_at = now()'
                " WHERE projection = $1",
                self.projection,
                position,
            )
        return progress

    async def _copy_rows(self, conn: asyncpg.Connection) -> None:
        by_type: dict[str, list[tuple[Any, ...]]] = {name: [] for name in AGGREGATES}
        for aggregate_id, aggregate in self.aggregates.items():
            row = Row(aggregate, self.positions[aggregate_id])
            by_type[PUBLIC_NAMES[type(aggregate)]].append(row.values())
        for aggregate_type, records in by_type.items():
            if records:
                await conn.copy_records_to_table(
                    table_name(aggregate_type, "_shadow"),
                    schema_name=self.schema,
                    records=records,
                    columns=COLUMNS,
                )
