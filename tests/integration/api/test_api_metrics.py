"""api.metrics' operation gauges on a real read model: unfinished operations
counted on every scrape from the state index, finished ones recounted only
when due, so a scrape never walks the whole table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cloud_engine.api.metrics import (
    FINISHED_COST_FACTOR,
    FINISHED_RECOUNT_S,
    FINISHED_RETRY_S,
    UNFINISHED,
    ApiMetrics,
    operations_by_state_sql,
)
from cloud_engine.engine.operations.operation import FINISHED
from cloud_engine.engine.store import EventStore
from cloud_engine.infra import tables
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from cloud_engine.projections import readmodel

pytestmark = pytest.mark.postgres


class Clock:
    """Monotonic time that moves only when told, or by `step` per reading."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class FinishedCountControl:
    """The real pool, but the count of finished operations can be made to
    fail (`failures` times) or to wait for `release`."""

    def __init__(self, pool: asyncpg.Pool, *, failures: int = 0, hold: bool = False) -> None:
        self.pool = pool
        self.failures = failures
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.waiting = asyncio.Event()

    async def fetchval(self, sql: str, *args: object) -> object:
        return await self.pool.fetchval(sql, *args)

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        if args and "succeeded" in args[0]:  # type: ignore[operator]
            self.waiting.set()
            await self.release.wait()
            if self.failures > 0:
                self.failures -= 1
                raise asyncpg.QueryCanceledError("canceling statement due to statement timeout")
        return await self.pool.fetch(sql, *args)


async def _add(pool: asyncpg.Pool, schema: str, state: str, count: int) -> None:
    await pool.execute(
        f'INSERT INTO "{schema}".{tables.table_name("operation")}'
        " (id, version, position, state, name, account, zone_id, created_on, modified_on, data)"
        " SELECT gen_random_uuid(), 1, g, $1, 'deploy', 'alice', NULL, now(), now(), '{}'"
        " FROM generate_series(1, $2::int) g",
        state,
        count,
    )


def _gauges(metrics: ApiMetrics) -> dict[str, float]:
    found = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith('cloudengine_operations{status="'):
            label, value = line.split(" ")
            found[label.split('"')[1]] = float(value)
    return found


@pytest.fixture
async def pool(pg_target: DatabaseTarget) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(pg_target, max_size=2)
    async with pool.acquire() as conn:
        await readmodel.prepare(conn, pg_target.schema)
    yield pool
    await pool.close()


async def test_unfinished_are_current_and_finished_are_recounted_when_due(
    pool: asyncpg.Pool, pg_target: DatabaseTarget, store: EventStore
) -> None:
    schema = pg_target.schema
    clock = Clock()
    metrics = ApiMetrics(clock=clock)
    await metrics.refresh(pool, schema)
    # Every status has its series from the first scrape, zero included.
    assert _gauges(metrics) == {
        "pending": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "compensating": 0,
        "compensated": 0,
    }

    await _add(pool, schema, "succeeded", 5)
    await _add(pool, schema, "running", 2)
    clock.now += 1
    await metrics.refresh(pool, schema)
    gauges = _gauges(metrics)
    assert gauges["running"] == 2  # current on every scrape
    assert gauges["succeeded"] == 0  # the count of a second ago stands

    await _add(pool, schema, "pending", 3)
    await _add(pool, schema, "failed", 4)
    clock.now += FINISHED_RECOUNT_S
    await metrics.refresh(pool, schema)
    gauges = _gauges(metrics)
    assert gauges["pending"] == 3 and gauges["running"] == 2
    assert gauges["succeeded"] == 5 and gauges["failed"] == 4 and gauges["compensated"] == 0


async def test_a_slow_count_is_redone_less_often(
    pool: asyncpg.Pool, pg_target: DatabaseTarget, store: EventStore
) -> None:
    schema = pg_target.schema
    clock = Clock(step=2.0)  # every reading 2 s on: the count "took" 2 s
    metrics = ApiMetrics(clock=clock)
    await metrics.refresh(pool, schema)
    counted_at = clock.now - 2.0
    await _add(pool, schema, "succeeded", 1)
    clock.now = counted_at + FINISHED_RECOUNT_S  # due by the period, not by the cost
    await metrics.refresh(pool, schema)
    assert _gauges(metrics)["succeeded"] == 0
    clock.now = counted_at + FINISHED_COST_FACTOR * 2.0
    await metrics.refresh(pool, schema)
    assert _gauges(metrics)["succeeded"] == 1


async def test_a_failed_count_is_retried_soon(
    pool: asyncpg.Pool, pg_target: DatabaseTarget, store: EventStore
) -> None:
    schema = pg_target.schema
    await _add(pool, schema, "succeeded", 4)
    clock = Clock()
    metrics = ApiMetrics(clock=clock)
    failing = FinishedCountControl(pool, failures=1)
    with pytest.raises(asyncpg.QueryCanceledError):
        await metrics.refresh(failing, schema)  # type: ignore[arg-type]
    clock.now += FINISHED_RETRY_S
    await metrics.refresh(failing, schema)  # type: ignore[arg-type]
    assert _gauges(metrics)["succeeded"] == 4


async def test_a_scrape_during_the_first_count_shows_no_false_zeros(
    pool: asyncpg.Pool, pg_target: DatabaseTarget, store: EventStore
) -> None:
    schema = pg_target.schema
    await _add(pool, schema, "succeeded", 4)
    await _add(pool, schema, "running", 1)
    metrics = ApiMetrics(clock=Clock())
    held = FinishedCountControl(pool, hold=True)
    first = asyncio.create_task(metrics.refresh(held, schema))  # type: ignore[arg-type]
    await held.waiting.wait()
    await metrics.refresh(held, schema)  # type: ignore[arg-type]
    gauges = _gauges(metrics)
    assert gauges["running"] == 1
    assert not FINISHED & gauges.keys()  # never counted yet: absent, not 0
    held.release.set()
    await first
    gauges = _gauges(metrics)
    assert gauges["succeeded"] == 4 and gauges["failed"] == 0 and gauges["compensated"] == 0


async def test_counting_the_unfinished_reads_the_state_index(
    pool: asyncpg.Pool, pg_target: DatabaseTarget
) -> None:
    schema = pg_target.schema
    await _add(pool, schema, "succeeded", 20_000)
    await _add(pool, schema, "running", 3)
    table = f'"{schema}".{tables.table_name("operation")}'
    await pool.execute(f"ANALYZE {table}")
    plan = "\n".join(
        r[0] for r in await pool.fetch("EXPLAIN " + operations_by_state_sql(schema), UNFINISHED)
    )
    assert "Seq Scan" not in plan, plan
    assert f"{tables.table_name('operation')}_by_state" in plan, plan
