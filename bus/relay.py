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
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from eventsourcing.persistence import StoredEvent

from bus.cloudevents import encode_data, headers_for, public_fields
from bus.naming import EventType, all_event_types, event_type_of, topic_for
from engine.database import DatabaseTarget
from engine.mapper import MsgspecMapper

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
        self._mapper = MsgspecMapper()
        self._fields: dict[str, tuple[str, ...]] = {}
        self._partitions: dict[str, int] = {}
        self._partition_of: OrderedDict[tuple[str, str], int] = OrderedDict()
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
        await conn.execute(
            f"INSERT INTO {self._positions} (name, position, offsets) VALUES ($1, $2, $3::jsonb)"
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

    def _partition(self, topic: str, key: str, count: int) -> int:
        # Kafka's default (murmur2) partitioner, so other producers agree.
        cache_key = (topic, key)
        partition = self._partition_of.get(cache_key)
        if partition is None:
            partition = (murmur2(key.encode()) & 0x7FFFFFFF) % count
            self._partition_of[cache_key] = partition
            if len(self._partition_of) > 200_000:
                self._partition_of.popitem(last=False)
        return partition

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
    def _message(self, row: asyncpg.Record) -> tuple[str, str, bytes, list[tuple[str, bytes]]]:
        stored_topic: str = row["topic"]
        event_type: EventType = event_type_of(stored_topic)
        fields = self._fields.get(stored_topic)
        if fields is None:
            fields = self._fields[stored_topic] = public_fields(event_type)
        aggregate_id = str(row["originator_id"])
        version = int(row["originator_version"])
        event: Any = self._mapper.to_domain_event(
            StoredEvent(row["originator_id"], version, stored_topic, bytes(row["state"]))
        )
        headers = headers_for(
            event_type=event_type,
            source=self.config.source,
            aggregate_id=aggregate_id,
            version=version,
            position=int(row["notification_id"]),
            time=event.timestamp,
            meta=event.meta,
        )
        topic = topic_for(self.config.topic_prefix, event_type.aggregate)
        return topic, aggregate_id, encode_data(event, fields), headers

    async def _publish(
        self, producer: AIOKafkaProducer, probe: AIOKafkaConsumer, rows: list[asyncpg.Record]
    ) -> None:
        per_partition: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for row in rows:
            topic, key, value, headers = self._message(row)
            count = await self._partition_count(producer, topic)
            per_partition[(topic, self._partition(topic, key, count))].append(
                (key.encode(), value, headers)
            )
        await asyncio.gather(
            *(self._send_partition(producer, tp, msgs) for tp, msgs in per_partition.items())
        )
        # What the broker now holds must never be less than what it held
        # before; the end offsets are read back rather than computed from the
        # produce responses, whose offsets brokers report differently.
        tps = [TopicPartition(topic, partition) for topic, partition in per_partition]
        ends = await probe.end_offsets(tps)
        for tp in tps:
            name = f"{tp.topic}:{tp.partition}"
            end = int(ends[tp])
            if end < self._acked.get(name, 0):
                raise BrokerLost(f"{name} ends at {end}, below {self._acked[name]} seen before")
            self._acked[name] = end

    async def _send_partition(
        self, producer: AIOKafkaProducer, tp: tuple[str, int], messages: list[Any]
    ) -> None:
        """Send one partition's messages in order, one batch in flight at a time."""
        topic, partition = tp
        i = 0
        while i < len(messages):
            batch = producer.create_batch()
            start = i
            while i < len(messages):
                key, value, headers = messages[i]
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    break
                i += 1
            if i == start:
                raise ValueError(f"event too large for one Kafka record on {topic}")
            future = await producer.send_batch(batch, topic, partition=partition)
            await future

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
        try:
            position = await self._load_position(conn)
            await self._check_broker(probe)
            loop = asyncio.get_running_loop()
            next_check = loop.time() + self.config.broker_check_interval
            while not stop.is_set():
                # Cleared before reading, so a NOTIFY during the round wakes the next.
                self._wake.clear()
                rows = await self._fetch(conn, position)
                if rows:
                    await self._publish(producer, probe, rows)
                    position = int(rows[-1]["notification_id"])
                    await self._save_position(conn, position)
                    self.stats.published += len(rows)
                    self.stats.rounds += 1
                    self.stats.position = position
                    if len(rows) == self.config.batch_size:
                        continue
                if loop.time() >= next_check:
                    await self._check_broker(probe)
                    next_check = loop.time() + self.config.broker_check_interval
                await _wait_any(stop, self._wake, self.config.poll_interval)
        finally:
            await probe.stop()
            await producer.stop()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
