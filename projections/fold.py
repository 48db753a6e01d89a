"""The bulk part of a rebuild: fold the log into rows of shadow tables.

The log is streamed in aggregate order (the primary key's order: aggregate
id, then version) through a server-side cursor, so one aggregate at a time is
in memory: memory stays flat however long the log. Each finished aggregate
becomes one row; rows are COPYed on a second connection while the next page
is decoded.

Folding is CPU-bound Python, so a long log is split by aggregate id into
ranges folded by separate processes, each with its own connections (the
shadow tables have no key yet, so their COPYs do not contend).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import asyncpg

from cloud_engine.engine.catalog import AGGREGATES, PUBLIC_NAMES
from cloud_engine.engine.fast_fold import FastFold
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import events_table, table_name
from cloud_engine.projections.readmodel import COLUMNS, Row

PAGE = 5_000  # events per cursor fetch
COPY_ROWS = 5_000  # rows per COPY round
# Rows of aggregates with at least this many events keep a snapshot; shorter
# ones are refolded from the log by the applier when it next needs them
# (pickling costs more than folding a few events again).
SNAPSHOT_FROM_VERSION = 32
LOWEST = UUID(int=0)
HIGHEST = UUID(int=(1 << 128) - 1)

_ORDERED = (
    "SELECT originator_id, originator_version, topic, state, notification_id"
    " FROM {events} WHERE notification_id <= $1 AND originator_id BETWEEN $2 AND $3"
    " ORDER BY originator_id, originator_version"
)

Counter = Callable[[int], None]  # told how many more events were folded


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    # Folding allocates millions of short-lived objects, none in cycles; the
    # cyclic collector would otherwise rescan the young ones over and over
    # (measured: decoding 2.4x slower with it on).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ShadowWriter:
    """Buffers rows per aggregate type and COPYs them into the shadow tables,
    one COPY round in flight while the caller keeps folding."""

    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.buffers: dict[str, list[tuple[Any, ...]]] = {name: [] for name in AGGREGATES}
        self.buffered = 0
        self.in_flight: asyncio.Task[None] | None = None

    async def add(self, row: Row) -> None:
        aggregate = row.aggregate
        snapshot = aggregate.version >= SNAPSHOT_FROM_VERSION
        self.buffers[PUBLIC_NAMES[type(aggregate)]].append(row.values(snapshot=snapshot))
        self.buffered += 1
        if self.buffered >= COPY_ROWS:
            await self.flush(wait=False)

    async def flush(self, *, wait: bool = True) -> None:
        if self.in_flight is not None:
            await self.in_flight
            self.in_flight = None
        full = {name: rows for name, rows in self.buffers.items() if rows}
        self.buffers = {name: [] for name in AGGREGATES}
        self.buffered = 0
        if full:
            self.in_flight = asyncio.create_task(self._copy(full))
        if wait and self.in_flight is not None:
            await self.in_flight
            self.in_flight = None

    async def _copy(self, full: dict[str, list[tuple[Any, ...]]]) -> None:
        for aggregate_type, records in full.items():
            await self.conn.copy_records_to_table(
                table_name(aggregate_type, "_shadow"),
                schema_name=self.schema,
                records=records,
                columns=COLUMNS,
            )


async def fold_range(
    target: DatabaseTarget, until: int, low: UUID, high: UUID, counter: Counter
) -> None:
    """Fold the events at or below `until` of the aggregates with ids in
    [low, high] into rows of the shadow tables."""
    reader = await connect(target)
    writer = await connect(target)
    try:
        shadows = ShadowWriter(writer, target.schema)
        # Per stored topic, a function folding one event into its aggregate
        # without the library's per-event mutate machinery (engine.fast_fold).
        fold = FastFold()
        folders, folder_for = fold.folders, fold.folder
        aggregate: Any = None
        current: UUID | None = None
        position = 0
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            cursor = await reader.cursor(
                _ORDERED.format(events=events_table(target.schema)), until, low, high
            )
            while rows := await cursor.fetch(PAGE):
                with no_cyclic_gc():
                    for originator_id, version, topic, state, notification_id in rows:
                        if originator_id != current:
                            if aggregate is not None:
                                await shadows.add(Row(aggregate, position))
                            aggregate, current = None, originator_id
                        folder = folders.get(topic) or folder_for(topic)
                        aggregate = folder(aggregate, originator_id, version, state)
                        position = notification_id
                counter(len(rows))
        if aggregate is not None:
            await shadows.add(Row(aggregate, position))
        await shadows.flush()
    finally:
        await reader.close()
        await writer.close()


def id_ranges(parts: int) -> list[tuple[UUID, UUID]]:
    """`parts` contiguous ranges covering every UUID (ids are random, so
    ranges of equal width hold about as many aggregates)."""
    width = (1 << 128) // parts
    bounds = [i * width for i in range(parts)] + [1 << 128]
    return [(UUID(int=bounds[i]), UUID(int=bounds[i + 1] - 1)) for i in range(parts)]


def default_processes() -> int:
    # One core is left to PostgreSQL (it scans and COPYs for every fold
    # process); on two cores a second fold process measured no faster.
    return max(1, min(4, (os.cpu_count() or 1) - 1))


# Fold processes -------------------------------------------------------------


def _fold_process(
    target: DatabaseTarget,
    until: int,
    low: UUID,
    high: UUID,
    folded: Any,  # multiprocessing Value: this process's event count
    errors: Any,  # multiprocessing Queue: a failure's traceback
) -> None:
    def count(n: int) -> None:
        folded.value += n

    try:
        asyncio.run(fold_range(target, until, low, high, count))
    except BaseException:
        errors.put(traceback.format_exc())
        raise SystemExit(1) from None


async def fold_in_processes(
    target: DatabaseTarget, until: int, processes: int, counter: Counter
) -> None:
    """fold_range over `processes` id ranges, one process each; raises
    RuntimeError naming a failed process's error."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    counts = [ctx.Value("q", 0, lock=False) for _ in range(processes)]
    children = [
        ctx.Process(
            target=_fold_process,
            args=(target, until, low, high, counts[i], errors),
            name=f"cloud-engine-replay-{i}",
            daemon=True,
        )
        for i, (low, high) in enumerate(id_ranges(processes))
    ]
    for child in children:
        child.start()
    reported = 0
    try:
        while True:
            await asyncio.sleep(0.1)
            total = sum(c.value for c in counts)
            counter(total - reported)
            reported = total
            if any(c.exitcode not in (None, 0) for c in children):
                try:
                    detail = errors.get(timeout=5)
                except queue.Empty:
                    detail = "it exited without a traceback (killed?)"
                raise RuntimeError(f"a replay process failed: {detail}")
            if all(c.exitcode == 0 for c in children):
                return
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join()
