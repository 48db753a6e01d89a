"""A relay session that fails sends nothing after the failure.

The session ends when a round is not acknowledged in time; the next one
republishes from the saved position. If the ending session flushed the
batches queued behind the failed one, an aggregate's later event could be
stored before its earlier one (the chaos run saw it with PostgreSQL down
under the broker). Here the broker is frozen (SIGSTOP) with one batch in
flight and one queued behind it on the same partition; the session's end
must drop the queued one."""

from __future__ import annotations

import asyncio
import os
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.relay import BATCH_TTL_S, _abort
from cloud_engine.bus.topics import ensure_topics

TOPIC = "relay-abort"


async def stored_values(bootstrap: str) -> list[bytes]:
    tp = TopicPartition(TOPIC, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    values += [r.value for r in records if r.value is not None]
        return values
    finally:
        await consumer.stop()


async def test_a_failed_session_drops_the_batches_queued_behind_the_failed_one(
    own_broker: DevBroker,
) -> None:
    bootstrap = own_broker.bootstrap
    await ensure_topics(bootstrap, [TOPIC], 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=0,
        request_timeout_ms=int(BATCH_TTL_S * 1000),
    )
    await producer.start()
    await producer.send_and_wait(TOPIC, b"before", partition=0)
    pid = own_broker._process.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    try:
        in_flight = await producer.send(TOPIC, b"in flight", partition=0)
        async with asyncio.timeout(10):
            while not producer._sender._in_flight:
                await asyncio.sleep(0.01)
        # Queued: its partition is muted while the first is in flight.
        queued = await producer.send(TOPIC, b"queued", partition=0)
        await _abort(producer)
        # Failed, not left pending: stop() would wait on them for good.
        assert in_flight.done() and queued.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.wait_for(producer.stop(), 30)
    values = await stored_values(bootstrap)
    assert values[0] == b"before"
    assert b"queued" not in values, values
