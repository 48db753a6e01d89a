"""api.metrics' operation gauges on a real read model: unfinished operations
counted on every scrape from the state index, finished ones recounted only
when due, so a scrape never walks the whole table."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from api.metrics import FINISHED_RECOUNT_S, ApiMetrics
from bus.relay_log import create_pool
from engine.database import DatabaseTarget
from engine.store import EventStore
from projections import readmodel

pytestmark = pytest.mark.postgres


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _add(pool: asyncpg.Pool, schema: str, state: str, count: int) -> None:
    await pool.execute(
        f'INSERT INTO "{schema}".{readmodel.table_name("operation")}'
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


async def test_counting_the_unfinished_reads_the_state_index(
    pool: asyncpg.Pool, pg_target: DatabaseTarget
) -> None:
    schema = pg_target.schema
    await _add(pool, schema, "succeeded", 20_000)
    await _add(pool, schema, "running", 3)
    table = f'"{schema}".{readmodel.table_name("operation")}'
    await pool.execute(f"ANALYZE {table}")
    plan = "\n".join(
        r[0]
        for r in await pool.fetch(
            f"EXPLAIN SELECT state, count(*) FROM {table}"
            " WHERE state = ANY($1::text[]) GROUP BY state",
            ["compensating", "pending", "running"],
        )
    )
    assert "Seq Scan" not in plan, plan
    assert f"{readmodel.table_name('operation')}_by_state" in plan, plan
