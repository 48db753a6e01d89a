"""The durable dev broker's fetch cost over time, without and with retention.

Tansu's S3 engine lists a partition's whole `records/` prefix on every fetch
behind the end and on every ListOffsets; its store (bus.broker_store) keeps
one object per produced batch. Without retention that listing, and so every
fetch, grows with the partition's history; with retention
(bus.broker_retention) it stays at what the retention period holds.

Two phases in one run, each on a fresh durable dev broker (its records in a
database of one embedded PostgreSQL): the baseline with retention off, then
retention at --retention-s. In each, for --minutes: a producer sends
--rate records/s to one partition, each send awaited (one batch object
each, as the relay's small rounds at a low rate); a consumer group reads
them (fetch wait 20 ms, as our consumers) and commits every second; a probe
times ListOffsets Latest (end_offsets: one listing of the partition) every
second. Per --window-seconds window: the batch objects stored, the probe's
median, and produce->consume lag p50/p99.

    python bench/broker_retention.py [--minutes 4] [--rate 40] [--retention-s 30]

Last line: baseline_batches_end=<n> retention_batches_end=<n>
baseline_probe_ms_end=<x> retention_probe_ms_end=<x> baseline_lag_p99_ms_end=<x>
retention_lag_p99_ms_end=<x> baseline_probe_trend_pct=<x> retention_probe_trend_pct=<x>
(_end: the last window; the trend is the least-squares slope of the probe
median per window from the second on, in % of its mean per window: ~0 when
the cost no longer grows)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.broker_retention import Policy
from cloud_engine.bus.topics import ensure_topics
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.pg import connect
from cloud_engine.infra.settings import load_settings

TOPIC = "bench.retention"
TP = TopicPartition(TOPIC, 0)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Window:
    batches: int = 0
    probes_ms: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    produced: int = 0

    def row(self) -> tuple[float, float, float]:
        probe = statistics.median(self.probes_ms) if self.probes_ms else float("nan")
        return probe, pct(self.lags_ms, 50), pct(self.lags_ms, 99)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def trend_pct(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sum(
        (x - mean_x) ** 2 for x in range(n)
    )
    return 100 * slope / mean_y if mean_y else float("nan")


async def phase(db: DatabaseTarget, args: argparse.Namespace, retention_s: float) -> list[Window]:
    broker = DevBroker(database=db, retention=Policy(retention_s=retention_s))
    bootstrap = broker.start()
    windows: list[Window] = []
    stop = asyncio.Event()
    try:
        await ensure_topics(bootstrap, [TOPIC], 1)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id="bench",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        for client in (consumer, producer, probe):
            await client.start()
        consumer.assign([TP])
        await consumer.commit({TP: 0})  # a live group from the start
        conn = await connect(db)
        windows.append(Window())

        async def produce() -> None:
            start = time.monotonic()
            n = 0
            while not stop.is_set():
                await (await producer.send(TOPIC, value=str(time.time()).encode(), partition=0))
                windows[-1].produced += 1
                n += 1
                await asyncio.sleep(max(0.0, start + n / args.rate - time.monotonic()))

        async def consume() -> None:
            committed = time.monotonic()
            while not stop.is_set():
                got = await consumer.getmany(TP, timeout_ms=200)
                now = time.time()
                windows[-1].lags_ms += [
                    (now - float(r.value or b"0")) * 1000 for r in got.get(TP, [])
                ]
                if time.monotonic() - committed >= 1:
                    await consumer.commit()
                    committed = time.monotonic()

        async def measure() -> None:
            while not stop.is_set():
                began = time.perf_counter()
                await probe.end_offsets([TP])
                windows[-1].probes_ms.append((time.perf_counter() - began) * 1000)
                await asyncio.sleep(1)

        tasks = [asyncio.create_task(f()) for f in (produce, consume, measure)]
        for w in range(int(args.minutes * 60 / args.window_seconds)):
            await asyncio.sleep(args.window_seconds)
            windows[-1].batches = await conn.fetchval(
                "SELECT count(*) FROM broker_objects WHERE key LIKE '%/records/%'"
            )
            probe_ms, p50, p99 = windows[-1].row()
            print(
                f"  window {w + 1}: {windows[-1].produced} produced, {windows[-1].batches}"
                f" batches stored, ListOffsets {probe_ms:.1f} ms, lag p50/p99"
                f" {p50:.0f}/{p99:.0f} ms, load {load()}",
                flush=True,
            )
            windows.append(Window())
        stop.set()
        await asyncio.gather(*tasks)
        windows.pop()
        await conn.close()
        for client in (consumer, producer, probe):
            await client.stop()
    finally:
        broker.stop()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=4.0, help="per phase")
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=40.0, help="records (batches) per second")
    parser.add_argument("--retention-s", type=float, default=30.0)
    args = parser.parse_args()
    configure_logging("console", "error")
    print(f"load average at start: {load()}", flush=True)
    results: dict[str, list[Window]] = {}
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        try:
            for name, retention_s in (("baseline", 0.0), ("retention", args.retention_s)):
                print(f"{name}: retention {retention_s} s, {args.rate}/s", flush=True)
                t = pg.target
                db = DatabaseTarget(
                    host=t.host,
                    port=t.port,
                    user=t.user,
                    password=t.password,
                    dbname=f"tansu_{name}",
                )
                results[name] = asyncio.run(phase(db, args, retention_s))
        finally:
            pg.stop()
    print(f"load average at end: {load()}", flush=True)
    keys = []
    for name, windows in results.items():
        probe_ms, _, p99 = windows[-1].row()
        keys += [
            f"{name}_batches_end={windows[-1].batches}",
            f"{name}_probe_ms_end={probe_ms:.1f}",
            f"{name}_lag_p99_ms_end={p99:.0f}",
        ]
        # From the second window: the first fills the retention period.
        trend = trend_pct([w.row()[0] for w in windows[1:]])
        keys.append(f"{name}_probe_trend_pct={trend:.1f}")
    print(" ".join(keys))


if __name__ == "__main__":
    main()
