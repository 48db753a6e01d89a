"""The projection worker: events from Kafka into the read models.

One consumer group per projection; each poll's events are applied in one
transaction (rows and position together). The transaction first locks the
projection's position row, as a replay's swap does, so the two never wait on
each other in opposite orders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from cloud_engine.bus.batch_consumer import BatchEventConsumer
from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig
from cloud_engine.bus.incoming import domain_event
from cloud_engine.bus.naming import all_event_types, topic_for
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from cloud_engine.infra.tables import positions_table
from cloud_engine.projections import readmodel

log = structlog.get_logger("projections.worker")


def consumer_config(bootstrap: str, prefix: str, projection: str = "aggregates") -> ConsumerConfig:
    topics = sorted({topic_for(prefix, t.aggregate) for t in all_event_types()})
    return ConsumerConfig(
        bootstrap=bootstrap,
        group_id=f"{prefix}.projection.{projection}",
        topics=topics,
        topic_prefix=prefix,
        max_records=2000,
    )


class ProjectionWorker:
    def __init__(
        self, target: DatabaseTarget, config: ConsumerConfig, projection: str = "aggregates"
    ) -> None:
        self.target = target
        self.config = config
        self.projection = projection
        self.applier = readmodel.Applier(target.schema, projection)
        self.consumer: BatchEventConsumer | None = None
        # Told of each batch once its transaction committed (metrics, benches).
        self.on_applied: Callable[[list[CloudEvent]], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        pool = await create_pool(self.target, max_size=2)
        try:
            async with pool.acquire() as conn:
                await readmodel.prepare(conn, self.target.schema)
                await conn.execute(
                    f"INSERT INTO {positions_table(self.target.schema)}"
                    " (projection, position) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                    self.projection,
                )

            async def handle(events: list[CloudEvent]) -> None:
                positioned = [(e.position, domain_event(e)) for e in events]
                async with pool.acquire() as conn, conn.transaction():
                    await conn.fetchval(
                        f"SELECT position FROM {positions_table(self.target.schema)}"
                        " WHERE projection = $1 FOR UPDATE",
                        self.projection,
                    )
                    await self.applier.apply(conn, positioned)
                if self.on_applied is not None:
                    self.on_applied(events)

            self.consumer = BatchEventConsumer(self.config, handle)
            task = asyncio.create_task(self.consumer.run())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
            self.consumer.stop()
            stopped.cancel()
            await task
        finally:
            await pool.close()
