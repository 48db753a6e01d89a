"""The dev broker's retention against the real broker: Tansu on
bus.broker_store, its store deleting record batches every live group read,
on each of the store's backends (PostgreSQL and memory)."""

from __future__ import annotations

import asyncio
import http.client
import re
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.broker_retention import Policy
from cloud_engine.bus.topics import ensure_topics
from cloud_engine.infra.database import DatabaseTarget

TOPIC = "retention.events"
TP = TopicPartition(TOPIC, 0)
PRODUCED = 30
SLOW_AT = 12  # the lagging group's committed offset
LATER = 5  # produced after the retention ran


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def broker_db(request: pytest.FixtureRequest) -> DatabaseTarget | None:
    """Where the store keeps the objects: a database of this test's own, or
    its memory (None)."""
    if request.param == "memory":
        return None
    target: DatabaseTarget = request.getfixturevalue("broker_database")
    return target


def _batches_stored(broker: DevBroker) -> int:
    """The topic's batch objects, as the store lists them to Tansu."""
    assert broker.store_port is not None
    conn = http.client.HTTPConnection("127.0.0.1", broker.store_port, timeout=10)
    try:
        prefix = f"clusters/tansu_cluster/topics/{TOPIC}/"
        conn.request("GET", f"/tansu?list-type=2&prefix={prefix}")
        xml = conn.getresponse().read().decode()
    finally:
        conn.close()
    return len(re.findall(r"<Key>[^<]*/records/[^<]*</Key>", xml))


def _consumer(bootstrap: str, group: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def _read(
    bootstrap: str,
    group: str | None,
    *,
    until: int,
    seek: int | None = None,
    commit: int | None = None,
) -> list[int]:
    """The offsets read from TP (assigned, no group join) up to offset
    `until` (exclusive); then commit `commit` for the group if given."""
    consumer = _consumer(bootstrap, group)
    await consumer.start()
    try:
        consumer.assign([TP])
        if seek is not None:
            consumer.seek(TP, seek)
        offsets: list[int] = []
        deadline = time.monotonic() + 60
        while (not offsets or offsets[-1] < until - 1) and time.monotonic() < deadline:
            got = await consumer.getmany(TP, timeout_ms=500)
            offsets += [r.offset for r in got.get(TP, []) if r.offset < until]
        if commit is not None:
            await consumer.commit({TP: commit})
        return offsets
    finally:
        await consumer.stop()


async def _commit(bootstrap: str, group: str, offset: int) -> None:
    consumer = _consumer(bootstrap, group)
    await consumer.start()
    try:
        consumer.assign([TP])
        await consumer.commit({TP: offset})
    finally:
        await consumer.stop()


async def _produce(bootstrap: str, values: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in values:  # one batch each, as the relay's small rounds
            await (await producer.send(TOPIC, value=f"v{n}".encode(), partition=0))
    finally:
        await producer.stop()


async def _bounds(bootstrap: str) -> tuple[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        first = (await consumer.beginning_offsets([TP]))[TP]
        end = (await consumer.end_offsets([TP]))[TP]
        return int(first), int(end)
    finally:
        await consumer.stop()


def test_retention_deletes_what_every_group_read_and_keeps_the_rest(
    broker_db: DatabaseTarget | None, tmp_path: Path
) -> None:
    broker = DevBroker(
        log_file=tmp_path / "broker.log",
        database=broker_db,
        memory_engine="store",
        # A pass every second; the groups below are all live.
        retention=Policy(retention_s=1, group_idle_s=3600),
    )
    bootstrap = broker.start()
    try:
        asyncio.run(ensure_topics(bootstrap, [TOPIC], 1))
        # Both groups read the topic before anything is produced, so from
        # the first batch on they hold back what they have not read.
        for group in ("fast", "slow"):
            asyncio.run(_commit(bootstrap, group, 0))
        asyncio.run(_produce(bootstrap, range(PRODUCED)))
        _, end = asyncio.run(_bounds(bootstrap))
        read = asyncio.run(_read(bootstrap, "fast", until=PRODUCED, commit=PRODUCED))
        assert read == list(range(PRODUCED))
        read = asyncio.run(_read(bootstrap, "slow", until=SLOW_AT, commit=SLOW_AT))
        assert read == list(range(SLOW_AT))

        # The store's passes delete the batches both groups read: up to the
        # slow group's offset, not one further.
        deadline = time.monotonic() + 60
        while asyncio.run(_bounds(bootstrap))[0] < SLOW_AT and time.monotonic() < deadline:
            time.sleep(0.5)
        assert asyncio.run(_bounds(bootstrap)) == (SLOW_AT, end)
        assert _batches_stored(broker) == PRODUCED - SLOW_AT

        # The lagging group goes on from its offset and misses nothing.
        assert asyncio.run(_read(bootstrap, "slow", until=PRODUCED)) == list(
            range(SLOW_AT, PRODUCED)
        )
        # A new group from earliest starts at the new log start.
        assert asyncio.run(_read(bootstrap, "new", until=PRODUCED)) == list(
            range(SLOW_AT, PRODUCED)
        )
        # A fetch below the log start: the records from the log start on,
        # once each (no error, no hang).
        assert asyncio.run(_read(bootstrap, None, until=PRODUCED, seek=0)) == list(
            range(SLOW_AT, PRODUCED)
        )
        # Later batches are fetched as before, after a restart too (a
        # durable one: the memory store comes back empty).
        if broker.durable:
            broker.restart()
        asyncio.run(_produce(bootstrap, range(PRODUCED, PRODUCED + LATER)))
        assert asyncio.run(_read(bootstrap, "fast", until=PRODUCED + LATER)) == list(
            range(PRODUCED, PRODUCED + LATER)
        )
        assert asyncio.run(_bounds(bootstrap))[0] == SLOW_AT
    finally:
        broker.stop()
