"""The Kafka gateway's answers, written in batches: every answer that is
ready while the batch before is being written goes into the next one, so
one INSERT records them, one round trip to the broker publishes them and
one UPDATE marks them published, however many commands run at once (what
the engine's writer does for commands).

Per answer, in this order (api/kafka_ledger.py says why): recorded (the
first answer recorded for a command wins: a redelivery publishes that
one), published unless the ledger says it already was (then the delivery
is a duplicate), marked published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from cloud_engine.api import kafka_ledger
from cloud_engine.api.kafka_ledger import Answer, Key
from cloud_engine.api.kafka_metrics import GatewayMetrics
from cloud_engine.api.problems import UNAVAILABLE
from cloud_engine.bus.command_topics import Incoming, Outcome, answer_headers
from cloud_engine.bus.consumer import INFRASTRUCTURE_ERRORS

log = structlog.get_logger("api.kafka_gateway")

# A dependency that is down: waited out, never a reason to give up on a
# command or to restart the gateway (bus/consumer.py does the same).
RETRYABLE: tuple[type[BaseException], ...] = (*UNAVAILABLE, *INFRASTRUCTURE_ERRORS, KafkaError)
RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)

T = TypeVar("T")


class Stopped(Exception):
    """Stop was asked while waiting for a dependency."""


async def patiently(what: str, step: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
    """step(), tried again while a dependency is down; Stopped if asked to stop meanwhile."""
    attempt = 0
    while True:
        try:
            return await step()
        except RETRYABLE as error:
            delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            attempt += 1
            log.warning(f"{what} failed, retrying", error=repr(error), retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            raise Stopped


@dataclass
class Delivery:
    """One record of the commands topic."""

    record: ConsumerRecord[bytes, bytes]
    incoming: Incoming
    key: Key
    tp: TopicPartition


class AnswerWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        producer: AIOKafkaProducer,
        topic: str,
        source: str,
        metrics: GatewayMetrics,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.producer = producer
        self.topic = topic
        self.source = source
        self.metrics = metrics
        self._queue: list[tuple[Delivery, Answer, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        # The gateway's stop: gives up waiting for a dependency.
        self.stopping = asyncio.Event()

    async def answer(self, delivery: Delivery, answer: Answer) -> None:
        """Returns once the answer is published (or the ledger says it was)."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((delivery, answer, done))
        self._ready.set()
        await done

    async def run(self, stop: asyncio.Event) -> None:
        """Write until stop is set and nothing is queued (or, while a
        dependency is down, until self.stopping is set)."""
        while True:
            waiting = asyncio.create_task(self._ready.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            stopping.cancel()
            if not self._queue and stop.is_set():
                return
            self._ready.clear()
            batch, self._queue = self._queue, []
            try:
                # Again as a whole when a dependency failed half-way: the
                # INSERT keeps the first answers, the UPDATE is idempotent,
                # and only a publish that the broker took but did not
                # acknowledge can be repeated (the same answer twice).
                await patiently(
                    "writing answers", functools.partial(self._write, batch), self.stopping
                )
            except BaseException as error:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                raise

    async def _write(self, batch: list[tuple[Delivery, Answer, asyncio.Future[None]]]) -> None:
        recorded = await kafka_ledger.record(self.pool, self.schema, [a for _, a, _ in batch])
        sends = []
        publishing = []
        for delivery, answer, done in batch:
            first = recorded.get(answer.key, answer)
            if first.published:
                if not done.done():
                    duplicate(self.metrics, delivery)
                    done.set_result(None)
                continue
            outcome: Outcome = "accepted" if first.status == 202 else "refused"
            headers = answer_headers(delivery.incoming, outcome, first.status, source=self.source)
            sends.append(
                await self.producer.send(
                    self.topic, first.value, key=delivery.incoming.id.encode(), headers=headers
                )
            )
            publishing.append((delivery, first, outcome, done))
        await asyncio.gather(*sends)
        now = time.time()
        for delivery, first, outcome, _ in publishing:
            self.metrics.answered.labels(outcome, str(first.status)).inc()
            self.metrics.round_trip.observe(max(0.0, now - delivery.record.timestamp / 1000))
            log.info(
                "command answered",
                ce_id=delivery.incoming.id,
                ce_source=delivery.incoming.source,
                ce_type=delivery.incoming.type,
                outcome=outcome,
                status=first.status,
            )
        await kafka_ledger.mark_published(self.pool, self.schema, [d.key for d, *_ in publishing])
        for *_, done in publishing:
            if not done.done():
                done.set_result(None)


def duplicate(metrics: GatewayMetrics, delivery: Delivery) -> None:
    metrics.duplicates.inc()
    log.info(
        "duplicate command, already answered",
        ce_id=delivery.incoming.id,
        ce_source=delivery.incoming.source,
        ce_type=delivery.incoming.type,
    )
