"""A handler that fails because the event store is down (PostgreSQL killed
or restarting, seen through the command service's psycopg) is retried
until it is back, never dead-lettered: the chaos run lost an automation
event so. A handler that fails on its own is dead-lettered after its
attempts, as before."""

from __future__ import annotations

import asyncio
from typing import Any

import eventsourcing.persistence
import psycopg
import pytest

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig, EventConsumer, MemoryDeduplicator

HEADERS = [
    ("ce_id", b"e1"),
    ("ce_source", b"test"),
    ("ce_type", b"io.cloudengine.vm.stopped.v1"),
    ("ce_subject", b"00000000-0000-0000-0000-000000000001"),
    ("ce_time", b"2026-12-07T00:00:00Z"),
    ("ce_position", b"1"),
    ("ce_aggregateversion", b"1"),
]


class Record:
    topic, partition, offset, key, value, headers = "t", 0, 0, b"k", b"{}", HEADERS


class Producer:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_and_wait(self, topic: str, **kwargs: Any) -> None:
        self.sent.append(topic)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("terminating connection due to unexpected postmaster exit"),
        psycopg.InterfaceError("the connection is closed"),
        eventsourcing.persistence.OperationalError("server closed the connection"),
    ],
)
def test_an_unreachable_event_store_is_waited_for_not_dead_lettered(error: Exception) -> None:
    calls: list[CloudEvent] = []

    async def handler(event: CloudEvent, _: object) -> None:
        calls.append(event)
        if len(calls) <= 5:  # more than max_attempts
            raise error

    config = ConsumerConfig(bootstrap="", group_id="g", topics=["t"], retry_backoff=0.001)
    consumer = EventConsumer(config, handler, MemoryDeduplicator())
    producer = Producer()
    asyncio.run(consumer._process(Record(), producer))  # type: ignore[arg-type]
    assert len(calls) == 6
    assert producer.sent == []
    assert (consumer.stats.applied, consumer.stats.dead_lettered) == (1, 0)


def test_a_failing_handler_is_dead_lettered_after_its_attempts() -> None:
    async def handler(event: CloudEvent, _: object) -> None:
        raise ValueError("a bug")

    config = ConsumerConfig(bootstrap="", group_id="g", topics=["t"], retry_backoff=0.001)
    consumer = EventConsumer(config, handler, MemoryDeduplicator())
    producer = Producer()
    asyncio.run(consumer._process(Record(), producer))  # type: ignore[arg-type]
    assert producer.sent == [config.dead_letter_topic]
    assert consumer.stats.dead_lettered == 1
