"""The consumer base for the engine, projections and effectors.

- A consumer group; offsets are committed manually, after processing.
- Deduplication on (aggregate id, aggregate version) through a Deduplicator,
  never on Kafka offsets: a redelivery, a rebalance, a replay or a broker that
  came back empty cannot apply anything twice.
- A handler that fails on an event is retried; if it keeps failing, the event
  goes to the group's dead-letter topic with the error attached and the
  partition moves on. Infrastructure errors (connections, timeouts) are retried
  without limit instead: an outage must not empty the topic into the DLQ.
- stop() (wired to SIGTERM by infra.process) finishes the current event,
  commits what was handled and leaves the group. (The dev broker numbers a
  group's first generation 0, for which aiokafka skips LeaveGroup; a restarted
  member of such a group then waits out the session timeout before it joins.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import eventsourcing.persistence
import psycopg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from cloud_engine.bus.cloudevents import CloudEvent, MalformedEvent, from_record
from cloud_engine.bus.naming import dead_letter_topic

log = structlog.get_logger("bus.consumer")

# The handler gets the event and whatever the deduplicator opened for it
# (a database connection inside the transaction that records the version).
Handler = Callable[[CloudEvent, Any], Awaitable[None]]
Work = Callable[[Any], Awaitable[None]]

# Retried without limit: the event is fine, something it needs is down. A
# handler bug (any other exception) is retried a few times, then dead-lettered.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # The event store down or restarting, seen through the command service
    # (psycopg, and the eventsourcing library's wrappers of it): a handler
    # that sends a command must wait for it, not dead-letter the event (the
    # chaos run lost a convergence event so when PostgreSQL was killed).
    psycopg.InterfaceError,
    psycopg.OperationalError,
    eventsourcing.persistence.InterfaceError,
    eventsourcing.persistence.OperationalError,
)


class Deduplicator(Protocol):
    async def apply_once(self, event: CloudEvent, work: Work) -> bool:
        """Run work unless this aggregate version was applied; True if it ran."""
        ...


class MemoryDeduplicator:
    """Highest applied version per aggregate, in memory (for effectors, which
    are idempotent against the hypervisor anyway, and for tests)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}

    async def apply_once(self, event: CloudEvent, work: Work) -> bool:
        if event.aggregate_version <= self.versions.get(event.subject, 0):
            return False
        await work(None)
        self.versions[event.subject] = event.aggregate_version
        return True


@dataclass
class ConsumerConfig:
    bootstrap: str
    group_id: str
    topics: list[str]
    topic_prefix: str = "cloudengine"
    max_attempts: int = 3
    retry_backoff: float = 0.2
    max_records: int = 500
    # The dev broker answers a fetch only when this expires (no wake-up on
    # new data), so it bounds every hop's latency there.
    fetch_max_wait_ms: int = 20
    # Handle one poll's records of different keys (aggregates) concurrently,
    # each key's in order; offsets are committed once all are handled.
    concurrent_keys: bool = False
    dead_letter: str | None = None

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letter or dead_letter_topic(self.topic_prefix, self.group_id)


@dataclass
class ConsumerStats:
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


class EventConsumer:
    def __init__(self, config: ConsumerConfig, handler: Handler, dedupe: Deduplicator) -> None:
        self.config = config
        self.handler = handler
        self.dedupe = dedupe
        self.stats = ConsumerStats()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            *self.config.topics,
            bootstrap_servers=self.config.bootstrap,
            group_id=self.config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
            metadata_max_age_ms=5000,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap, acks="all", enable_idempotence=False
        )
        try:
            await asyncio.wait_for(consumer.start(), 30)
            await asyncio.wait_for(producer.start(), 30)
        except BaseException:
            # Cancelled (a stop that will not wait out a group join the
            # broker may hold for seconds) or timed out: let go of both
            # without waiting for the broker, so neither is left unclosed.
            for client in (consumer, producer):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(client.stop(), 0.5)
            raise
        log.info("consumer started", group=self.config.group_id, topics=self.config.topics)
        # Offsets of records fully handled, committed explicitly: getmany()
        # moves the position past a whole batch before any record is handled,
        # so committing "the position" after an interruption would skip events.
        self._done: dict[TopicPartition, int] = {}
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(
                    timeout_ms=200, max_records=self.config.max_records
                )
                if batches:
                    await self._handle(batches, producer)
                    await self._commit(consumer)
        finally:
            # Bounded: a broker that went away must not keep a stop waiting.
            for step in (self._commit(consumer), consumer.stop(), producer.stop()):
                try:
                    await asyncio.wait_for(step, 10)
                except (TimeoutError, KafkaError, OSError) as e:
                    log.warning("shutdown step did not finish cleanly", error=repr(e))
            log.info("consumer stopped", group=self.config.group_id, **vars(self.stats))

    async def _handle(
        self,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        producer: AIOKafkaProducer,
    ) -> None:
        """Handle what one poll returned, one event at a time (per key, with
        concurrent_keys)."""
        if self.config.concurrent_keys:
            by_key: dict[tuple[TopicPartition, bytes | None], list[ConsumerRecord[bytes, bytes]]]
            by_key = {}
            for tp, records in batches.items():
                for record in records:
                    by_key.setdefault((tp, record.key), []).append(record)

            async def in_order(records: list[ConsumerRecord[bytes, bytes]]) -> None:
                for record in records:
                    await self._process(record, producer)

            await asyncio.gather(*(in_order(r) for r in by_key.values()))
            for tp, records in batches.items():
                self._done[tp] = records[-1].offset + 1
            return
        for tp, records in batches.items():
            for record in records:
                await self._process(record, producer)
                self._done[tp] = record.offset + 1

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        if not self._done:
            return
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in self._done.items()}
        try:
            await consumer.commit(offsets)
            self._done.clear()
        except (CommitFailedError, KafkaError) as e:
            # Rebalanced or broker gone: the next owner redelivers; dedupe absorbs it.
            log.warning("offset commit failed", error=repr(e))
            self._done.clear()

    async def _process(
        self, record: ConsumerRecord[bytes, bytes], producer: AIOKafkaProducer
    ) -> None:
        self.stats.received += 1
        try:
            event = from_record(
                record.headers,
                record.value,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        except MalformedEvent as e:
            await self._dead_letter(record, producer, e, attempts=0)
            return
        failures = 0
        while True:
            try:
                ran = await self.dedupe.apply_once(event, lambda ctx: self.handler(event, ctx))
            except INFRASTRUCTURE_ERRORS as e:
                log.warning("infrastructure error, retrying", error=repr(e), event_id=event.id)
                await asyncio.sleep(self.config.retry_backoff)
                continue
            except Exception as e:
                failures += 1
                if failures >= self.config.max_attempts:
                    await self._dead_letter(record, producer, e, attempts=failures)
                    return
                await asyncio.sleep(self.config.retry_backoff * failures)
                continue
            if ran:
                self.stats.applied += 1
            else:
                self.stats.duplicates += 1
            return

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        producer: AIOKafkaProducer,
        error: BaseException,
        attempts: int,
    ) -> None:
        headers = [
            *list(record.headers),
            ("dlq_error_type", type(error).__name__.encode()),
            ("dlq_error", str(error)[:4000].encode()),
            ("dlq_attempts", str(attempts).encode()),
            ("dlq_group", self.config.group_id.encode()),
            ("dlq_topic", record.topic.encode()),
            ("dlq_partition", str(record.partition).encode()),
            ("dlq_offset", str(record.offset).encode()),
        ]
        while True:
            try:
                await producer.send_and_wait(
                    self.config.dead_letter_topic,
                    value=record.value,
                    key=record.key,
                    headers=headers,
                )
                break
            except KafkaError as e:
                # Never drop it: without a dead letter the offset is not passed.
                log.warning("dead-letter publish failed, retrying", error=repr(e))
                await asyncio.sleep(self.config.retry_backoff)
        self.stats.dead_lettered += 1
        log.error(
            "event dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=repr(error),
            dead_letter_topic=self.config.dead_letter_topic,
        )
