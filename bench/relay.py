"""Relay throughput (store -> Kafka) and commit-to-consumer lag.

Part 1: N events are stored up front; the relay publishes them to the dev
broker (Tansu) and we time it. The baseline, in the same process against the
same broker, is aiokafka alone sending the same records (same keys, headers
and values, prepared in advance) with the same batch API: the ceiling for a
Python producer here.

Part 2: a writer stores events at a steady RATE through the command service
while the relay runs; a consumer (aiokafka, its own group) measures, for each
event, receive time minus the event's commit time (ce_time, taken in the
writer just before its transaction commits).

    python bench/relay.py [--events N] [--rate R] [--seconds S] [--broker-storage KIND]
                          [--pairs P]

--pairs P repeats part 1 P times and reports the median pair; each line also
gives the CPU time per event of the relay and of aiokafka alone (the ratio
follows it: both run in this one process).

--broker-storage postgres runs the dev broker as `up` does, its records kept
in a database of the same embedded PostgreSQL (bus.broker_store); memory
(the default) keeps them in the broker's memory.

Last line: relay_events_per_s=<n> aiokafka_events_per_s=<n> relay_ratio=<x>
lag_p50_ms=<n> lag_p99_ms=<n> (relay_ratio: the relay over aiokafka alone, same run)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.outgoing import OutgoingCodec, Record, partition_for
from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.engine.commands.fabric import DisableZone, EnableZone
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres, parse_database_url
from cloud_engine.infra.pg import connect
from cloud_engine.infra.settings import load_settings
from cloud_engine.runner.components import broker_database

PARTITIONS = 8


def store_events(store: EventStore, total: int) -> list[Zone]:
    """Zones toggled Enabled/Disabled: ten events each, mostly v1 types."""
    zones: list[Zone] = []
    pending: list[Any] = []
    while len(zones) * 10 < total:
        zone = Zone.create(f"z{len(zones)}")
        for n in range(9):
            zone.disable() if n % 2 == 0 else zone.enable()
        pending.extend(zone.collect_events())
        zones.append(zone)
        if len(pending) >= 1000:
            store.append(pending)
            pending = []
    if pending:
        store.append(pending)
    return zones


async def relay_throughput(
    target: DatabaseTarget, bootstrap: str, total: int, name: str = "relay"
) -> tuple[float, float]:
    """Events/s and CPU microseconds per event (this process: the relay)."""
    relay = Relay(target, RelayConfig(bootstrap=bootstrap, partitions=PARTITIONS, name=name))
    stop = asyncio.Event()
    started = time.perf_counter()
    cpu = time.process_time()
    task = asyncio.create_task(relay.run(stop))
    while relay.stats.published < total:
        await asyncio.sleep(0.002)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - started  # includes connecting and creating topics
    cpu = time.process_time() - cpu
    stop.set()
    await task
    return total / elapsed, cpu / total * 1e6


async def aiokafka_baseline(
    target: DatabaseTarget, bootstrap: str, total: int
) -> tuple[float, float]:
    """The same records, prepared in advance, sent with aiokafka's batch API:
    events/s and CPU microseconds per event of the timed part."""
    conn = await connect(target)
    rows = await conn.fetch(
        f'SELECT notification_id, originator_id, originator_version, topic, state FROM "{target.schema}".cloudengine_events ORDER BY notification_id LIMIT $1',  # noqa: E501
        total,
    )
    await conn.close()
    codec = OutgoingCodec("baseline", "/bench")
    records = [codec.record(*row) for row in rows]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("baseline.zone.events", PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_batch_size=512 * 1024, linger_ms=0
    )
    await producer.start()
    per_partition: dict[int, list[Record]] = {}
    for r in records:
        per_partition.setdefault(partition_for(r.key, PARTITIONS), []).append(r)
    started = time.perf_counter()
    cpu = time.process_time()
    futures = []
    for partition, items in per_partition.items():
        i = 0
        while i < len(items):
            batch = producer.create_batch()
            while i < len(items):
                r = items[i]
                if (
                    batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers)
                    is None
                ):
                    break
                i += 1
            futures.append(
                await producer.send_batch(batch, "baseline.zone.events", partition=partition)
            )
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await producer.stop()
    return len(records) / elapsed, cpu / len(records) * 1e6


async def lag(
    target: DatabaseTarget,
    bootstrap: str,
    service: CommandService,
    zones: list[Zone],
    rate: int,
    seconds: float,
) -> list[float]:
    """The relay runs as its own process here, as it is deployed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_DATABASE_URL=target.url(),
        CLOUD_ENGINE_DATABASE_SCHEMA=target.schema,
        CLOUD_ENGINE_KAFKA_BOOTSTRAP=bootstrap,
        CLOUD_ENGINE_TOPIC_PARTITIONS=str(PARTITIONS),
        CLOUD_ENGINE_LOG_LEVEL="warning",
    )
    relay = subprocess.Popen([sys.executable, "-m", "cloud_engine.runner.cli", "relay"], env=env)
    try:
        return await _measure_lag(target, bootstrap, service, zones, rate, seconds)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)


async def _measure_lag(
    target: DatabaseTarget,
    bootstrap: str,
    service: CommandService,
    zones: list[Zone],
    rate: int,
    seconds: float,
) -> list[float]:
    conn = await connect(target)
    try:
        while (
            await conn.fetchval(f'SELECT position FROM "{target.schema}".cloudengine_relay') or 0
        ) < service.store.max_position():
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    consumer = AIOKafkaConsumer(
        "cloudengine.zone.events",
        bootstrap_servers=bootstrap,
        group_id="lag-probe",
        auto_offset_reset="latest",
        fetch_max_wait_ms=int(os.environ.get("BENCH_FETCH_MAX_WAIT_MS", "5")),
        enable_auto_commit=False,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=50)
    await asyncio.sleep(0.5)  # let the group settle at the end of the log
    lags: list[float] = []
    relay_part: list[float] = []
    done = asyncio.Event()
    first_position = service.store.max_position()

    async def consume() -> None:
        while not done.is_set():
            batches = await consumer.getmany(timeout_ms=20)
            now = time.time()
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    # Only events written during this phase: the dev broker's
                    # "latest" offset reset is not exact, and older events
                    # would measure the phase before, not the relay's lag.
                    if int(headers["ce_position"]) <= first_position:
                        continue
                    created = datetime.fromisoformat(headers["ce_time"].decode()).timestamp()
                    lags.append((now - created) * 1000)
                    # The record timestamp is when the relay appended it.
                    relay_part.append(record.timestamp - created * 1000)

    consumer_task = asyncio.create_task(consume())
    # The writer is its own process (as API servers are), so its CPU does not
    # delay this consumer's event loop.
    writer = multiprocessing.get_context("spawn").Process(
        target=_write_steadily,
        args=(target.url(), target.schema, [(str(z.id), z.state) for z in zones], rate, seconds),
    )
    writer.start()
    while writer.is_alive():
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    done.set()
    await consumer_task
    await consumer.stop()
    sent = int(rate * seconds)
    print(f"lag: sent~{sent} received={len(lags)} over {seconds:.0f}s at {rate}/s")
    print(
        f"  store commit -> relay append: p50={statistics.median(relay_part):.1f}ms"
        f" p99={percentile(relay_part, 0.99):.1f}ms; the rest is broker and consumer fetch"
    )
    return lags


def _write_steadily(
    url: str, schema: str, zones: list[tuple[str, str]], rate: int, seconds: float
) -> None:
    """One event per command, at a steady rate, through a command service."""
    target = msgspec.structs.replace(parse_database_url(url), schema=schema)
    store = EventStore(target)
    service = CommandService(store)
    states = dict(zones)
    ids = [uuid.UUID(z) for z, _ in zones]
    interval = 1 / rate
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < seconds:
        zone_id = ids[sent % len(ids)]
        if states[str(zone_id)] == "Enabled":
            service.submit(DisableZone(zone_id=zone_id))
            states[str(zone_id)] = "Disabled"
        else:
            service.submit(EnableZone(zone_id=zone_id))
            states[str(zone_id)] = "Enabled"
        sent += 1
        delay = started + sent * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    service.close()
    store.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--broker-storage", choices=("memory", "postgres"), default="memory")
    parser.add_argument(
        "--pairs", type=int, default=1, help="part 1 this many times (relay, then aiokafka alone)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        durable = args.broker_storage == "postgres"
        broker = DevBroker(database=broker_database(pg.target) if durable else None)
        bootstrap = broker.start()
        store = EventStore(pg.target)
        try:
            zones = store_events(store, args.events)
            total = store.max_position()
            print(f"stored {total} events")
            pairs: list[tuple[float, float, float]] = []
            for n in range(args.pairs):
                # Each pair's relay under its own name starts from position 0.
                name = "relay" if n == 0 else f"relay-{n}"
                relay_rate, relay_cpu = asyncio.run(
                    relay_throughput(pg.target, bootstrap, total, name)
                )
                baseline, baseline_cpu = asyncio.run(aiokafka_baseline(pg.target, bootstrap, total))
                pairs.append((relay_rate / baseline, relay_rate, baseline))
                print(
                    f"relay: {relay_rate:.0f} events/s, {relay_cpu:.1f} us CPU/event;"
                    f" aiokafka alone, same records: {baseline:.0f}/s,"
                    f" {baseline_cpu:.1f} us CPU/event; ratio {relay_rate / baseline:.2f}"
                    f" (load {os.getloadavg()[0]:.1f})"
                )
            ratio, relay_rate, baseline = sorted(pairs)[len(pairs) // 2]  # the median pair
            service = CommandService(store)
            lags = asyncio.run(
                lag(pg.target, bootstrap, service, zones[:5000], args.rate, args.seconds)
            )
            service.close()
        finally:
            store.close()
            broker.stop()
            pg.stop()
    p50 = statistics.median(lags)
    p99 = percentile(lags, 0.99)
    print(
        f"relay_events_per_s={relay_rate:.0f} aiokafka_events_per_s={baseline:.0f}"
        f" relay_ratio={ratio:.2f} lag_p50_ms={p50:.1f} lag_p99_ms={p99:.1f}"
    )


if __name__ == "__main__":
    main()
