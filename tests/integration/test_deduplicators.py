"""Both Deduplicators through one abstract test case, one subclass per
backend (as the eventsourcing library tests its recorders):
MemoryDeduplicator (bus/consumer.py; the engine and the effectors) and
PostgresDeduplicator (bus/dedupe_pg.py; consumers that write to
PostgreSQL). What EventConsumer relies on is checked the same way on both:
an aggregate version is applied once, an older one never, aggregates do
not affect each other, and work that failed is not recorded, so its
redelivery runs it again. What only one backend does is in its subclass.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import Deduplicator, MemoryDeduplicator, Work
from cloud_engine.bus.dedupe_pg import PostgresDeduplicator
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool


def event(aggregate: uuid.UUID, version: int, position: int = 1) -> CloudEvent:
    return CloudEvent(
        id=f"{aggregate}:{version}",
        source="/test",
        type="io.cloudengine.zone.enabled.v1",
        subject=str(aggregate),
        time="2026-01-01T00:00:00Z",
        position=position,
        aggregate_version=version,
    )


class Ran:
    """Work that records what it was run for, and what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.contexts: list[Any] = []

    def work(self, e: CloudEvent) -> Work:
        async def run(context: Any) -> None:
            self.events.append((e.subject, e.aggregate_version))
            self.contexts.append(context)

        return run


class Broken(Exception):
    pass


async def broken(_context: Any) -> None:
    raise Broken("the handler failed")


class DeduplicatorTestCase(ABC):
    """The contract; a subclass gives the `dedupe` fixture and `applied`."""

    @abstractmethod
    async def applied(self, dedupe: Any) -> dict[str, int]:
        """The highest applied version per aggregate id."""

    async def test_a_first_delivery_runs_and_records_its_version(
        self, dedupe: Deduplicator
    ) -> None:
        a, ran = uuid.uuid4(), Ran()
        assert await dedupe.apply_once(event(a, 1), ran.work(event(a, 1))) is True
        assert ran.events == [(str(a), 1)]
        assert await self.applied(dedupe) == {str(a): 1}

    async def test_a_redelivered_version_does_not_run_again(self, dedupe: Deduplicator) -> None:
        a, ran = uuid.uuid4(), Ran()
        for _ in range(3):
            await dedupe.apply_once(event(a, 1), ran.work(event(a, 1)))
        assert ran.events == [(str(a), 1)]

    async def test_an_older_version_never_runs_after_a_newer_one(
        self, dedupe: Deduplicator
    ) -> None:
        a, ran = uuid.uuid4(), Ran()
        assert await dedupe.apply_once(event(a, 3), ran.work(event(a, 3))) is True
        assert await dedupe.apply_once(event(a, 2), ran.work(event(a, 2))) is False
        assert await dedupe.apply_once(event(a, 1), ran.work(event(a, 1))) is False
        assert ran.events == [(str(a), 3)]
        assert await self.applied(dedupe) == {str(a): 3}

    async def test_each_newer_version_runs(self, dedupe: Deduplicator) -> None:
        a, ran = uuid.uuid4(), Ran()
        for version in (1, 2, 4):
            assert await dedupe.apply_once(event(a, version), ran.work(event(a, version)))
        assert ran.events == [(str(a), 1), (str(a), 2), (str(a), 4)]
        assert await self.applied(dedupe) == {str(a): 4}

    async def test_aggregates_are_deduplicated_apart(self, dedupe: Deduplicator) -> None:
        a, b, ran = uuid.uuid4(), uuid.uuid4(), Ran()
        await dedupe.apply_once(event(a, 2), ran.work(event(a, 2)))
        assert await dedupe.apply_once(event(b, 1), ran.work(event(b, 1))) is True
        assert await dedupe.apply_once(event(b, 2), ran.work(event(b, 2))) is True
        assert ran.events == [(str(a), 2), (str(b), 1), (str(b), 2)]
        assert await self.applied(dedupe) == {str(a): 2, str(b): 2}

    async def test_failed_work_is_not_recorded_and_runs_again(self, dedupe: Deduplicator) -> None:
        a, ran = uuid.uuid4(), Ran()
        await dedupe.apply_once(event(a, 1), ran.work(event(a, 1)))
        with pytest.raises(Broken):
            await dedupe.apply_once(event(a, 2), broken)
        assert await self.applied(dedupe) == {str(a): 1}
        assert await dedupe.apply_once(event(a, 2), ran.work(event(a, 2))) is True
        assert ran.events == [(str(a), 1), (str(a), 2)]


class TestMemoryDeduplicator(DeduplicatorTestCase):
    @pytest.fixture
    def dedupe(self) -> MemoryDeduplicator:
        return MemoryDeduplicator()

    async def applied(self, dedupe: MemoryDeduplicator) -> dict[str, int]:
        return dict(dedupe.versions)

    async def test_the_work_gets_no_context(self, dedupe: MemoryDeduplicator) -> None:
        a, ran = uuid.uuid4(), Ran()
        await dedupe.apply_once(event(a, 1), ran.work(event(a, 1)))
        assert ran.contexts == [None]


@pytest.mark.postgres
class TestPostgresDeduplicator(DeduplicatorTestCase):
    @pytest.fixture
    async def pool(self, pg_target: DatabaseTarget) -> AsyncIterator[asyncpg.Pool]:
        pool = await create_pool(pg_target, max_size=4)
        try:
            yield pool
        finally:
            await pool.close()

    @pytest.fixture
    async def dedupe(self, pool: asyncpg.Pool, pg_target: DatabaseTarget) -> PostgresDeduplicator:
        made = PostgresDeduplicator(pool, "contract", schema=pg_target.schema)
        await made.setup()
        return made

    async def applied(self, dedupe: PostgresDeduplicator) -> dict[str, int]:
        return await dedupe.applied_versions()

    async def test_the_work_writes_in_the_transaction_that_records_the_version(
        self, dedupe: PostgresDeduplicator, pool: asyncpg.Pool, pg_target: DatabaseTarget
    ) -> None:
        table = f'"{pg_target.schema}".seen'
        await pool.execute(f"CREATE TABLE {table} (version int)")
        a = uuid.uuid4()

        def write_then(fail: bool, version: int) -> Work:
            async def run(conn: asyncpg.Connection) -> None:
                assert conn.is_in_transaction()
                await conn.execute(f"INSERT INTO {table} VALUES ($1)", version)
                if fail:
                    raise Broken("after the write")

            return run

        with pytest.raises(Broken):
            await dedupe.apply_once(event(a, 1), write_then(True, 1))
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0  # rolled back with it
        await dedupe.apply_once(event(a, 1), write_then(False, 1))
        assert await pool.fetchval(f"SELECT array_agg(version) FROM {table}") == [1]

    async def test_versions_outlive_the_deduplicator_and_are_per_consumer(
        self, dedupe: PostgresDeduplicator, pool: asyncpg.Pool, pg_target: DatabaseTarget
    ) -> None:
        a, ran = uuid.uuid4(), Ran()
        await dedupe.apply_once(event(a, 1), ran.work(event(a, 1)))
        again = PostgresDeduplicator(pool, "contract", schema=pg_target.schema)
        other = PostgresDeduplicator(pool, "another", schema=pg_target.schema)
        assert await again.apply_once(event(a, 1), ran.work(event(a, 1))) is False
        assert await other.apply_once(event(a, 1), ran.work(event(a, 1))) is True
        assert ran.events == [(str(a), 1), (str(a), 1)]
