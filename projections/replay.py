"""Rebuild the read models from the event store (not from Kafka).

The bulk of the log is folded into shadow tables (projections.fold: flat
memory, several processes for a long log); the primary keys and the
secondary indexes are built once at the end of the load (one sorted build
each instead of an index insert per COPYed row; the secondary ones several
at a time, on as many connections as there are cores), and the shadow
tables are analyzed so the first queries after the swap are planned on real
statistics (the expression indexes' included).

The swap runs in one transaction that first locks the projection's position
row, so the live worker waits for it instead of writing to a table being
replaced. Inside it, the events committed during the rebuild are applied to
the shadow tables (through the live worker's Applier), the shadow tables are
renamed into place and the position is set. Reads keep being served from the
old tables until the swap commits.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from cloud_engine.bus.relay_log import RelayLog
from cloud_engine.engine.catalog import AGGREGATES
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import positions_table, table_name
from cloud_engine.projections.fold import (
    HIGHEST,
    LOWEST,
    default_processes,
    fold_in_processes,
    fold_range,
)
from cloud_engine.projections.readmodel import (
    Applier,
    create_index_sql,
    create_table_sql,
    indexes,
)

CATCH_UP_PAGE = 1_000
# Below this many events the rebuild folds in its own process: starting fold
# processes (~1 s of imports each) costs more than it saves.
PARALLEL_FROM_EVENTS = 100_000


@dataclass
class Progress:
    events: int = 0  # events folded so far
    target: int = 0  # events to fold (grows when the catch-up finds more)
    position: int = 0  # position the rebuilt tables reflect, once swapped
    started: float = 0.0

    @property
    def per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.events / elapsed if elapsed > 0 else 0.0


ProgressHook = Callable[[Progress], None]


class Rebuild:
    def __init__(
        self,
        target: DatabaseTarget,
        projection: str = "aggregates",
        *,
        processes: int | None = None,
    ) -> None:
        self.target = target
        self.processes = default_processes() if processes is None else max(1, processes)
        # Index builds at a time once the rows are in: the server's cores.
        self.index_builders = max(1, min(4, os.cpu_count() or 1))
        self.schema = target.schema
        self.projection = projection
        self.log = RelayLog(self.schema, "replay")
        self.mapper = MsgspecMapper()

    async def run(
        self, *, to_position: int | None = None, hook: ProgressHook | None = None
    ) -> Progress:
        conn = await connect(self.target)
        try:
            latest = await self.log.latest(conn)
            until = latest if to_position is None else min(to_position, latest)
            total = await conn.fetchval(
                f"SELECT count(*) FROM {self.log.events} WHERE notification_id <= $1", until
            )
            progress = Progress(target=int(total), position=until, started=time.monotonic())

            def folded(n: int) -> None:
                progress.events += n
                if hook is not None:
                    hook(progress)

            await self._create_shadows(conn)
            if self.processes > 1 and progress.target >= PARALLEL_FROM_EVENTS:
                await fold_in_processes(self.target, until, self.processes, folded)
            else:
                await fold_range(self.target, until, LOWEST, HIGHEST, folded)
            await self._index_shadows(conn)
            await self._swap(conn, until, catch_up=to_position is None, progress=progress)
            if hook is not None:
                hook(progress)
            return progress
        finally:
            await conn.close()

    async def _create_shadows(self, conn: asyncpg.Connection) -> None:
        for aggregate_type in AGGREGATES:
            shadow = table_name(aggregate_type, "_shadow")
            await conn.execute(f'DROP TABLE IF EXISTS "{self.schema}".{shadow}')
            # Read models swapped in by earlier versions kept their shadow
            # table's key name; free it for this rebuild's.
            await conn.execute(
                f'ALTER INDEX IF EXISTS "{self.schema}".{shadow}_pkey'
                f" RENAME TO {table_name(aggregate_type)}_pkey"
            )
            await conn.execute(create_table_sql(self.schema, shadow, key=False))

    async def _index_shadows(self, conn: asyncpg.Connection) -> None:
        shadows = {t: table_name(t, "_shadow") for t in AGGREGATES}
        # Keys first, one at a time: ADD PRIMARY KEY locks its table
        # exclusively.
        for shadow in shadows.values():
            await conn.execute(
                f'ALTER TABLE "{self.schema}".{shadow}'
                f" ADD CONSTRAINT {shadow}_pkey PRIMARY KEY (id)"
            )
        # CREATE INDEX takes a SHARE lock, which another CREATE INDEX on the
        # same table does not wait for: the sorts run side by side, one per
        # connection, while the fold process has nothing left to do.
        statements = [
            create_index_sql(self.schema, shadow, index)
            for aggregate_type, shadow in shadows.items()
            for index in indexes(aggregate_type)
        ]
        await self._spread(conn, statements, self.index_builders)
        for shadow in shadows.values():
            # Outside the swap's transaction: it would hold the live tables'
            # locks while sampling.
            await conn.execute(f'ANALYZE "{self.schema}".{shadow}')

    async def _spread(self, conn: asyncpg.Connection, statements: list[str], width: int) -> None:
        """Run statements over `width` connections (conn and width - 1 more),
        each taking the next one as it finishes the last."""
        queue = list(reversed(statements))
        extra = [await connect(self.target) for _ in range(min(width, len(statements)) - 1)]

        async def work(c: asyncpg.Connection) -> None:
            while queue:
                await c.execute(queue.pop())

        try:
            # A failure cancels the other builds (TaskGroup) before it is raised.
            async with asyncio.TaskGroup() as group:
                for c in [conn, *extra]:
                    group.create_task(work(c))
        finally:
            for c in extra:
                await c.close()

    async def _swap(
        self, conn: asyncpg.Connection, until: int, *, catch_up: bool, progress: Progress
    ) -> None:
        async with conn.transaction():
            # Blocks the live worker (it locks this row first in each of its
            # transactions) until the new tables are in place.
            await conn.execute(
                f"INSERT INTO {positions_table(self.schema)} (projection, position) VALUES ($1, 0)"
                " ON CONFLICT (projection) DO NOTHING",
                self.projection,
            )
            await conn.fetchval(
                f"SELECT position FROM {positions_table(self.schema)}"
                " WHERE projection = $1 FOR UPDATE",
                self.projection,
            )
            position = until
            if catch_up:
                position = await self._catch_up(conn, until, progress)
            for aggregate_type in AGGREGATES:
                live = table_name(aggregate_type)
                shadow = table_name(aggregate_type, "_shadow")
                await conn.execute(f'DROP TABLE IF EXISTS "{self.schema}".{live}')
                await conn.execute(f'ALTER TABLE "{self.schema}".{shadow} RENAME TO {live}')
                for suffix in ["pkey", *(i.suffix for i in indexes(aggregate_type))]:
                    await conn.execute(
                        f'ALTER INDEX "{self.schema}".{shadow}_{suffix} RENAME TO {live}_{suffix}'
                    )
            await conn.execute(
                f"UPDATE {positions_table(self.schema)} SET position = $2, updated_at = now()"
                " WHERE projection = $1",
                self.projection,
                position,
            )
            progress.position = position

    async def _catch_up(self, conn: asyncpg.Connection, after: int, progress: Progress) -> int:
        """Apply what was committed while the rebuild ran (positions follow
        commit order, so reading on from `after` misses nothing)."""
        applier = Applier(self.schema, self.projection, suffix="_shadow")
        while rows := await self.log.read(conn, after, CATCH_UP_PAGE):
            events = [
                (
                    int(r["notification_id"]),
                    self.mapper.decode(
                        r["originator_id"], r["originator_version"], r["topic"], r["state"]
                    ),
                )
                for r in rows
            ]
            await applier.apply(conn, events)
            after = events[-1][0]
            progress.events += len(events)
            progress.target += len(events)
        return after
