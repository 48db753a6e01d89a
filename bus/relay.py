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
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from bus.naming import all_event_types, topic_for
from bus.outgoing import OutgoingCodec, partition_for
from engine.database import DatabaseTarget

log = structlog.get_logger("bus.relay")

EVENTS_TABLE = "cloudengine_events"
CHANNEL = "cloudengine_events"  # the eventsourcing recorder NOTIFYs on it


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


@dataclass
class _Round:
    position: int  # the last event's global position
    count: int
    futures: list[asyncio.Future[Any]]
    partitions: list[TopicPartition]


class BrokerLost(Exception):
    """The broker has less than it acknowledged before: republish everything."""


async def connect(target: DatabaseTarget) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password or None,
        database=target.dbname,
    )


class Relay:
    def __init__(self, target: DatabaseTarget, config: RelayConfig) -> None:
        self.target = target
        self.config = config
        self.stats = RelayStats()
        self._schema = target.schema
        self._codec = OutgoingCodec(config.topic_prefix, config.source)
        self._partitions: dict[str, int] = {}
        self._acked: dict[str, int] = {}  # "topic:partition" -> next offset
        self._wake = asyncio.Event()

    # SQL ------------------------------------------------------------------
    @property
    def _events(self) -> str:
        return f'"{self._schema}".{EVENTS_TABLE}'

    @property
    def _positions(self) -> str:
        return f'"{self._schema}".cloudengine_relay'

    async def _prepare_db(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._positions} ("
            " name text PRIMARY KEY, position bigint NOT NULL,"
            " offsets jsonb NOT NULL DEFAULT '{}'::jsonb,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        )

    async def _load_position(self, conn: asyncpg.Connection) -> int:
        row = await conn.fetchrow(
            f"SELECT position, offsets FROM {self._positions} WHERE name = $1", self.config.name
        )
        if row is None:
            return 0
        self._acked = {k: int(v) for k, v in json.loads(row["offsets"]).items()}
        return int(row["position"])

    async def _save_position(self, conn: asyncpg.Connection, position: int) -> None:
        # No need to wait for the WAL flush: a position lost in a crash only
        # means republishing a few acknowledged events, which consumers dedupe.
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit TO OFF")
            await conn.execute(
                f"INSERT INTO {self._positions} (name, position, offsets)"
                " VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position,"
                " offsets = EXCLUDED.offsets, updated_at = now()",
                self.config.name,
                position,
                json.dumps(self._acked),
            )

    async def _fetch(self, conn: asyncpg.Connection, after: int) -> list[asyncpg.Record]:
        return list(
            await conn.fetch(
                f"SELECT notification_id, originator_id, originator_version, topic, state"
                f" FROM {self._events} WHERE notification_id > $1"
                " ORDER BY notification_id LIMIT $2",
                after,
                self.config.batch_size,
            )
        )

    # Kafka ------------------------------------------------------------------
    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = sorted(
                {topic_for(self.config.topic_prefix, t.aggregate) for t in all_event_types()}
            )
            missing = [
                NewTopic(t, num_partitions=self.config.partitions, replication_factor=1)
                for t in wanted
                if t not in existing
            ]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(missing)
                log.info("created topics", topics=[t.name for t in missing])
        finally:
            await admin.close()

    async def _partition_count(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = await producer.partitions_for(topic)
            count = self._partitions[topic] = len(partitions)
        return count

    async def _check_broker(self, probe: AIOKafkaConsumer) -> None:
        if not self._acked:
            return
        tps = []
        for name in self._acked:
            topic, _, partition = name.rpartition(":")
            tps.append(TopicPartition(topic, int(partition)))
        try:
            ends = await probe.end_offsets(tps)
        except KafkaError as e:
            raise BrokerLost(f"cannot read end offsets: {e}") from e
        for tp in tps:
            expected = self._acked[f"{tp.topic}:{tp.partition}"]
            if ends.get(tp, 0) < expected:
                raise BrokerLost(f"{tp.topic}[{tp.partition}] ends at {ends.get(tp)} < {expected}")

    # Publishing ---------------------------------------------------------------
    async def _enqueue(self, producer: AIOKafkaProducer, rows: list[asyncpg.Record]) -> _Round:
        """Hand one round of events to the producer without waiting for acks.

        aiokafka keeps at most one request in flight per partition and sends a
        partition's batches in the order they were queued, so queuing the next
        round before this one is acknowledged cannot reorder an aggregate.
        """
        per_partition: dict[tuple[str, int], list[Any]] = defaultdict(list)
        counts: dict[str, int] = {}
        codec = self._codec
        for row in rows:
            record = codec.record(
                row["notification_id"],
                row["originator_id"],
                row["originator_version"],
                row["topic"],
                row["state"],
            )
            count = counts.get(record.topic)
            if count is None:
                count = counts[record.topic] = await self._partition_count(producer, record.topic)
            per_partition[(record.topic, partition_for(record.key, count))].append(record)
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), records in per_partition.items():
            i = 0
            while i < len(records):
                batch = producer.create_batch()
                start = i
                while i < len(records):
                    r = records[i]
                    if (
                        batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers)
                        is None
                    ):
                        break
                    i += 1
                if i == start:
                    raise ValueError(f"event too large for one Kafka record on {topic}")
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        return _Round(
            position=int(rows[-1]["notification_id"]),
            count=len(rows),
            futures=futures,
            partitions=[TopicPartition(t, p) for t, p in per_partition],
        )

    async def _settle(
        self, conn: asyncpg.Connection, probe: AIOKafkaConsumer, round_: _Round
    ) -> None:
        """Wait for a round's acks, then (and only then) move the saved position."""
        await asyncio.gather(*round_.futures)
        # What the broker holds must never be less than what it held before;
        # end offsets are read back rather than computed from produce
        # responses, whose offsets brokers report differently.
        ends = await probe.end_offsets(round_.partitions)
        for tp in round_.partitions:
            name = f"{tp.topic}:{tp.partition}"
            end = int(ends[tp])
            if end < self._acked.get(name, 0):
                raise BrokerLost(f"{name} ends at {end}, below {self._acked[name]} seen before")
            self._acked[name] = end
        await self._save_position(conn, round_.position)
        self.stats.published += round_.count
        self.stats.rounds += 1
        self.stats.position = round_.position

    # Main loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        conn = await connect(self.target)
        listener = await connect(self.target)
        await self._prepare_db(conn)
        await listener.add_listener(CHANNEL, lambda *_: self._wake.set())
        try:
            while not stop.is_set():
                try:
                    await self._session(conn, stop)
                except BrokerLost as e:
                    log.warning("broker lost events, republishing from the start", reason=str(e))
                    self.stats.republishes += 1
                    self._acked = {}
                    self._partitions.clear()
                    await self._save_position(conn, 0)
                except (TimeoutError, KafkaError, OSError) as e:
                    self.stats.errors += 1
                    log.warning(
                        "publishing failed, resuming from the saved position", error=repr(e)
                    )
                    await _sleep_or_stop(stop, self.config.retry_backoff)
        finally:
            await listener.close()
            await conn.close()

    async def _session(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        await self._ensure_topics()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=0,
            max_batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=15000,
        )
        probe = AIOKafkaConsumer(bootstrap_servers=self.config.bootstrap)
        await producer.start()
        await probe.start()
        inflight: deque[_Round] = deque()
        try:
            position = self.stats.position = await self._load_position(conn)
            await self._check_broker(probe)
            loop = asyncio.get_running_loop()
            next_check = loop.time() + self.config.broker_check_interval
            while not stop.is_set():
                # Cleared before reading, so a NOTIFY during the round wakes the next.
                self._wake.clear()
                rows = await self._fetch(conn, position)
                if rows:
                    inflight.append(await self._enqueue(producer, rows))
                    position = inflight[-1].position
                    while inflight and (
                        len(inflight) > MAX_ROUNDS_IN_FLIGHT
                        or all(f.done() for f in inflight[0].futures)
                    ):
                        await self._settle(conn, probe, inflight.popleft())
                    if len(rows) == self.config.batch_size:
                        continue
                # Idle: settle what the broker acknowledged, but wake for new
                # events rather than waiting on acks of the rounds still out.
                while inflight and all(f.done() for f in inflight[0].futures):
                    await self._settle(conn, probe, inflight.popleft())
                if inflight:
                    await _wait_any(stop, self._wake, 1.0, inflight[0].futures)
                    continue
                if loop.time() >= next_check:
                    await self._check_broker(probe)
                    next_check = loop.time() + self.config.broker_check_interval
                await _wait_any(stop, self._wake, self.config.poll_interval)
            while inflight:
                await self._settle(conn, probe, inflight.popleft())
        finally:
            await probe.stop()
            await producer.stop()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(
    stop: asyncio.Event,
    wake: asyncio.Event,
    timeout: float,
    acks: list[asyncio.Future[Any]] | None = None,
) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    watched: list[asyncio.Future[Any]] = [*waiters, *(acks or [])]
    try:
        await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
