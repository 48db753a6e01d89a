"""Deduplication in PostgreSQL, in the same transaction as the handler's work.

The applied version per (consumer, aggregate) is updated in the transaction the
handler writes in, so a crash either keeps both or neither: an event is never
lost and never applied twice.
"""

from __future__ import annotations

import asyncpg

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import Work
from cloud_engine.infra.ddl import create_once


class PostgresDeduplicator:
    def __init__(self, pool: asyncpg.Pool, consumer: str, schema: str = "public") -> None:
        self.pool = pool
        self.consumer = consumer
        self.table = f'"{schema}".cloudengine_applied'

    async def setup(self) -> None:
        async with self.pool.acquire() as conn:
            await create_once(
                conn,
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " consumer text NOT NULL, aggregate_id uuid NOT NULL,"
                " version bigint NOT NULL, position bigint NOT NULL,"
                " PRIMARY KEY (consumer, aggregate_id))",
            )

    async def apply_once(self, event: CloudEvent, work: Work) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            applied = await conn.fetchval(
                f"SELECT version FROM {self.table} WHERE consumer = $1 AND aggregate_id = $2"
                " FOR UPDATE",
                self.consumer,
                event.aggregate_id,
            )
            if applied is not None and event.aggregate_version <= applied:
                return False
            await work(conn)
            await conn.execute(
                f"INSERT INTO {self.table} (consumer, aggregate_id, version, position)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, aggregate_id)"
                " DO UPDATE SET version = EXCLUDED.version, position = EXCLUDED.position",
                self.consumer,
                event.aggregate_id,
                event.aggregate_version,
                event.position,
            )
        return True

    async def applied_versions(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT aggregate_id, version FROM {self.table} WHERE consumer = $1",
                self.consumer,
            )
        return {str(r["aggregate_id"]): int(r["version"]) for r in rows}
