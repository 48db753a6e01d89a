"""The relay: every stored event to Kafka, in order per aggregate, at least once.

It follows the store's notification log (global positions, gap-free in commit
order), woken by the store's NOTIFY with a polling fallback, and publishes each
event as a CloudEvent to its aggregate type's topic with the aggregate id as
key. Its position is written to PostgreSQL only after the broker acknowledged
every event up to it. On any failure it resumes from that position, so the
broker may see an event twice but never a later event of an aggregate before
an earlier one; consumers dedupe on (aggregate, version).

Broker loss: the relay remembers the offsets the broker acknowledged per
partition. A broker that answers with lower offsets (or has lost a topic) has
lost data, so the relay starts again from position 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from cloud_engine.bus.naming import all_event_types, topic_for
from cloud_engine.bus.outgoing import OutgoingCodec, partition_for
from cloud_engine.bus.relay_batch import BatchWriter
from cloud_engine.bus.relay_log import RelayLog
from cloud_engine.bus.topics import ensure_topics
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import EVENTS_CHANNEL

log = structlog.get_logger("bus.relay")


@dataclass
class RelayConfig:
    bootstrap: str
    topic_prefix: str = "cloudengine"
    partitions: int = 8
    source: str = "/cloudengine"
    batch_size: int = 5000
    name: str = "relay"
    poll_interval: float = 1.0  # fallback when no NOTIFY arrives
    broker_check_interval: float = 2.0
    retry_backoff: float = 0.5


@dataclass
class RelayStats:
    published: int = 0
    rounds: int = 0
    republishes: int = 0
    errors: int = 0
    position: int = 0
    last_round_events: list[int] = field(default_factory=list)


MAX_ROUNDS_IN_FLIGHT = 4
MAX_BATCH_BYTES = 512 * 1024
BROKER_TIMEOUT = 10.0  # seconds for one broker request the relay waits on
# A batch's life in aiokafka before it is failed (then the partition's next
# batch goes): longer than any wait that ends a session (BROKER_TIMEOUT * 2).
BATCH_TTL_S = BROKER_TIMEOUT * 6
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionRefusedError,
    FileNotFoundError,  # a Unix socket that is not there (yet)
)


@dataclass
class _Round:
    position: int  # the last event's global position
    count: int
    futures: list[asyncio.Future[Any]]
    partitions: list[TopicPartition]


class BrokerLost(Exception):
    """The broker has less than it acknowledged before: republish everything."""


class Relay:
    def __init__(self, target: DatabaseTarget, config: RelayConfig) -> None:
        self.target = target
        self.config = config
        self.stats = RelayStats()
        self._schema = target.schema
        self._codec = OutgoingCodec(config.topic_prefix, config.source)
        self._partitions: dict[str, int] = {}
        self._log = RelayLog(target.schema, config.name)
        self._acked: dict[str, int] = {}  # "topic:partition" -> next offset
        self._wake = asyncio.Event()

    # Kafka ------------------------------------------------------------------
    async def _ensure_topics(self) -> None:
        await ensure_topics(
            self.config.bootstrap,
            (topic_for(self.config.topic_prefix, t.aggregate) for t in all_event_types()),
            self.config.partitions,
        )

    async def _partition_count(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = await producer.partitions_for(topic)
            count = self._partitions[topic] = len(partitions)
        return count

    async def _check_broker(self, probe: AIOKafkaConsumer) -> None:
        """Raise BrokerLost if the broker holds less than it acknowledged."""
        if not self._acked:
            return
        tps = []
        for name in self._acked:
            topic, _, partition = name.rpartition(":")
            tps.append(TopicPartition(topic, int(partition)))
        existing = await asyncio.wait_for(probe.topics(), BROKER_TIMEOUT)
        missing = sorted({tp.topic for tp in tps} - set(existing))
        if missing:
            raise BrokerLost(f"topics gone from the broker: {', '.join(missing)}")
        for tp in tps:
            # A topic re-created with fewer partitions is a new topic.
            if tp.partition not in (probe.partitions_for_topic(tp.topic) or set()):
                raise BrokerLost(f"{tp.topic} has no partition {tp.partition} any more")
        await self._compare_ends(probe, tps, record=False)

    async def _compare_ends(
        self, probe: AIOKafkaConsumer, partitions: list[TopicPartition], *, record: bool
    ) -> None:
        """What the broker holds must never be less than what it held before.
        End offsets are read back rather than computed from produce responses,
        whose offsets brokers report differently."""
        ends = await asyncio.wait_for(probe.end_offsets(partitions), BROKER_TIMEOUT)
        for tp in partitions:
            name = f"{tp.topic}:{tp.partition}"
            end = int(ends.get(tp, 0))
            if end < self._acked.get(name, 0):
                raise BrokerLost(f"{name} ends at {end}, below {self._acked[name]} seen before")
            if record:
                self._acked[name] = end

    # Publishing ---------------------------------------------------------------
    async def _enqueue(self, producer: AIOKafkaProducer, rows: list[asyncpg.Record]) -> _Round:
        """Hand one round of events to the producer without waiting for acks.

        aiokafka keeps at most one request in flight per partition and sends a
        partition's batches in the order they were queued, so queuing the next
        round before this one is acknowledged cannot reorder an aggregate.
        """
        writers: dict[tuple[str, int], BatchWriter] = {}
        counts: dict[str, int] = {}
        wire = self._codec.wire
        for row in rows:
            topic, key, body = wire(*row)
            count = counts.get(topic)
            if count is None:
                count = counts[topic] = await self._partition_count(producer, topic)
            tp = (topic, partition_for(key, count))
            writer = writers.get(tp)
            if writer is None:
                writer = writers[tp] = BatchWriter(MAX_BATCH_BYTES)
            writer.add(body)
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), writer in writers.items():
            writer.flush()
            for batch in writer.batches:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        return _Round(
            position=int(rows[-1][0]),
            count=len(rows),
            futures=futures,
            partitions=[TopicPartition(t, p) for t, p in writers],
        )

    async def _settle(
        self, conn: asyncpg.Connection, probe: AIOKafkaConsumer, rounds: list[_Round]
    ) -> None:
        """Wait for the rounds' acks, then (and only then) move the saved position."""
        # aiokafka retries some errors (an unknown topic on a replaced broker)
        # for a long time; give up sooner and let the session start over.
        await asyncio.wait_for(
            asyncio.gather(*(f for r in rounds for f in r.futures)), BROKER_TIMEOUT * 2
        )
        partitions = list(dict.fromkeys(tp for r in rounds for tp in r.partitions))
        await self._compare_ends(probe, partitions, record=True)
        await self._log.save(conn, rounds[-1].position, self._acked)
        self.stats.published += sum(r.count for r in rounds)
        self.stats.rounds += len(rounds)
        self.stats.position = rounds[-1].position

    # Main loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._connected(stop)
            except DATABASE_ERRORS as e:
                self.stats.errors += 1
                log.warning("event store unreachable, reconnecting", error=repr(e))
                await _sleep_or_stop(stop, self.config.retry_backoff * 4)

    async def _connected(self, stop: asyncio.Event) -> None:
        conn = await connect(self.target)
        listener = await connect(self.target)
        try:
            await self._log.prepare(conn)
            await listener.add_listener(EVENTS_CHANNEL, lambda *_: self._wake.set())
            while not stop.is_set():
                try:
                    await _until_stopped(self._session(conn, stop), stop)
                except BrokerLost as e:
                    log.warning("broker lost events, republishing from the start", reason=str(e))
                    self.stats.republishes += 1
                    self._acked = {}
                    self._partitions.clear()
                    await self._log.save(conn, 0, self._acked)
                except DATABASE_ERRORS:
                    raise
                except (TimeoutError, KafkaError, OSError) as e:
                    self.stats.errors += 1
                    log.warning(
                        "publishing failed, resuming from the saved position", error=repr(e)
                    )
                    await _sleep_or_stop(stop, self.config.retry_backoff)
        finally:
            for c in (listener, conn):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.close(), 5)

    async def _session(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        await asyncio.wait_for(self._ensure_topics(), BROKER_TIMEOUT)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=0,
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=4 * 1024 * 1024,
            # Also how long a batch may wait before aiokafka fails it and
            # sends the partition's next batches: it must outlast the
            # session's own timeouts, which end the session first (see
            # _abort). The broker's request timeout stays bounded by them.
            request_timeout_ms=int(BATCH_TTL_S * 1000),
        )
        probe = AIOKafkaConsumer(bootstrap_servers=self.config.bootstrap, metadata_max_age_ms=1000)
        acker_conn = await connect(self.target)
        await asyncio.wait_for(producer.start(), BROKER_TIMEOUT)
        await asyncio.wait_for(probe.start(), BROKER_TIMEOUT)
        # Rounds go to the acker in order; the queue's bound is how many rounds
        # may be in flight. The reader never waits on acks or position writes.
        rounds: asyncio.Queue[_Round | None] = asyncio.Queue(maxsize=MAX_ROUNDS_IN_FLIGHT)
        acker = asyncio.create_task(self._acker(acker_conn, probe, rounds))
        clean = False
        try:
            position, self._acked = await self._log.load(conn)
            self.stats.position = position
            await self._check_broker(probe)
            loop = asyncio.get_running_loop()
            next_check = loop.time() + self.config.broker_check_interval
            while not stop.is_set():
                if acker.done():
                    acker.result()  # the acker failed: end the session with its error
                # Cleared before reading, so a NOTIFY during the round wakes the next.
                self._wake.clear()
                if loop.time() >= next_check:
                    # Before publishing, and also while rounds are in flight: a
                    # replaced broker leaves sends waiting for topics it lacks
                    # instead of failing them.
                    await self._check_broker(probe)
                    next_check = loop.time() + self.config.broker_check_interval
                rows = await self._log.read(conn, position, self.config.batch_size)
                if rows:
                    round_ = await asyncio.wait_for(
                        self._enqueue(producer, rows), BROKER_TIMEOUT * 2
                    )
                    position = round_.position
                    await _put_unless_failed(rounds, round_, acker)
                if len(rows) == self.config.batch_size:
                    continue
                await _wait_any(stop, self._wake, self.config.poll_interval, [acker])
            await _put_unless_failed(rounds, None, acker)
            await acker  # settle what is in flight before a clean stop
            clean = True
        finally:
            if not acker.done():
                acker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await acker
            # Bounded: aiokafka's stop waits to flush batches a lost broker
            # may never take; they are republished from the saved position.
            await _bounded(probe.stop())
            if not clean:
                await _abort(producer)
            await _bounded(producer.stop())
            await _bounded(acker_conn.close())

    async def _acker(
        self,
        conn: asyncpg.Connection,
        probe: AIOKafkaConsumer,
        rounds: asyncio.Queue[_Round | None],
    ) -> None:
        while True:
            first = await rounds.get()
            if first is None:
                return
            # Settle every round already waiting in one go: one offsets check
            # and one position write, however many small rounds a busy log made.
            batch = [first]
            while not rounds.empty():
                item = rounds.get_nowait()
                if item is None:
                    await self._settle(conn, probe, batch)
                    return
                batch.append(item)
            await self._settle(conn, probe, batch)


async def _put_unless_failed(
    rounds: asyncio.Queue[_Round | None], item: _Round | None, acker: asyncio.Task[None]
) -> None:
    put = asyncio.ensure_future(rounds.put(item))
    await asyncio.wait([put, acker], return_when=asyncio.FIRST_COMPLETED)
    if not put.done():
        put.cancel()
        acker.result()  # raises the acker's error
        raise RuntimeError("acker stopped unexpectedly")


async def _until_stopped(session: Awaitable[None], stop: asyncio.Event) -> None:
    """Run a session; once stop is set, give it a grace period to settle the
    rounds in flight, then cancel it (a broker that went away must not keep
    the process from stopping)."""
    task = asyncio.ensure_future(session)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), BROKER_TIMEOUT)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                log.warning("relay session cancelled at stop")
                return
        task.result()
    finally:
        stopper.cancel()


async def _abort(producer: AIOKafkaProducer) -> None:
    """Stop sending at once, dropping the batches not yet sent. A session
    ends on a failure (a round not acknowledged in time, the broker or
    the store gone): stop() would flush the later rounds' batches after
    the one that failed, and the next session republishes from the saved
    position, so an aggregate's later event could reach the log before
    the earlier one (the 10-minute chaos run saw version 584 of a storage
    pool stored before 583, PostgreSQL down under the broker). aiokafka
    has no public abort: its sender task is cancelled, the rest of stop()
    then only closes the connections. The dropped batches are failed, or
    stop()'s flush would wait on them for good, holding their bytes."""
    sender = producer._sender
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(sender.close(), BROKER_TIMEOUT)
    accumulator = producer._message_accumulator
    dropped = [b for queue in accumulator._batches.values() for b in queue]
    dropped += list(accumulator._pending_batches)
    accumulator._batches.clear()
    for batch in dropped:
        batch.failure(exception=KafkaError("relay session ended; republished by the next one"))
        if batch.future.done():
            batch.future.exception()  # retrieved: nobody waits for it any more


async def _bounded(step: Awaitable[Any], seconds: float = BROKER_TIMEOUT) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except (TimeoutError, KafkaError, OSError) as e:
        log.warning("shutdown step did not finish cleanly", error=repr(e))


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(
    stop: asyncio.Event,
    wake: asyncio.Event,
    timeout: float,
    others: list[asyncio.Future[Any]] | list[asyncio.Task[None]] | None = None,
) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    watched: list[asyncio.Future[Any]] = [*waiters, *(others or [])]
    try:
        await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
