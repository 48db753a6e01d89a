"""A consumer that hands each poll's events to its handler in one call, so the
handler can apply them in one transaction (projections batch rows).

Deduplication is the handler's (projections keep each row's aggregate version).
If a batch fails for another reason than infrastructure, its events are
handled again one by one with the single-event rules: retries, then the
dead-letter topic for the one that keeps failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from cloud_engine.bus.cloudevents import CloudEvent, MalformedEvent, from_record
from cloud_engine.bus.consumer import INFRASTRUCTURE_ERRORS, ConsumerConfig, EventConsumer, Work

log = structlog.get_logger("bus.batch_consumer")

BatchHandler = Callable[[list[CloudEvent]], Awaitable[None]]


class _Always:
    async def apply_once(self, event: CloudEvent, work: Work) -> bool:
        await work(None)
        return True


class BatchEventConsumer(EventConsumer):
    def __init__(self, config: ConsumerConfig, handler: BatchHandler) -> None:
        self.batch_handler = handler

        async def one(event: CloudEvent, _ctx: Any) -> None:
            await handler([event])

        super().__init__(config, one, _Always())

    async def _handle(
        self,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        producer: AIOKafkaProducer,
    ) -> None:
        events: list[CloudEvent] = []
        try:
            for records in batches.values():
                for r in records:
                    events.append(
                        from_record(
                            r.headers,
                            r.value,
                            topic=r.topic,
                            partition=r.partition,
                            offset=r.offset,
                        )
                    )
        except MalformedEvent:
            await super()._handle(batches, producer)
            return
        while True:
            try:
                await self.batch_handler(events)
            except INFRASTRUCTURE_ERRORS as e:
                log.warning("infrastructure error, retrying the batch", error=repr(e))
                await asyncio.sleep(self.config.retry_backoff)
                continue
            except Exception as e:
                log.warning("batch failed, handling its events one by one", error=repr(e))
                await super()._handle(batches, producer)
                return
            break
        self.stats.received += len(events)
        self.stats.applied += len(events)
        for tp, records in batches.items():
            self._done[tp] = records[-1].offset + 1
