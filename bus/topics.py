"""Topic creation: brokers need not auto-create topics, so every producer of
a topic of ours creates it first."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = structlog.get_logger("bus.topics")


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int) -> None:
    """Create those of `topics` the broker lacks (another process creating
    them at the same time is fine)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t, num_partitions=partitions, replication_factor=1)
            for t in sorted(set(topics))
            if t not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics", topics=[t.name for t in missing])
    finally:
        await admin.close()
