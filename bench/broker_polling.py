"""The dev broker's CPU with idle consumers: how it scales with consumer
groups, partitions, history and the fetch wait.

Tansu answers every fetch after its max_wait, having passed over every
partition the request names, so idle consumers cost the broker CPU in
proportion to groups x partitions x fetches a second. This starts a dev
broker, subscribes --groups consumer groups (as bus/consumer.py's: manual
commits, --fetch-wait-ms) to --topics topics of 8 partitions, lets them
join, then for each --history checkpoint produces one batch per partition
per round up to it and measures the broker's (and its store's) CPU over
--seconds with nothing arriving.

    python bench/broker_polling.py [--engine tansu|store] [--topics 6] [--groups 4]
                                   [--history 0,2400] [--fetch-wait-ms 20] [--seconds 10]

Last line: broker_idle_cores=<x at the last checkpoint>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cloud_engine.bus.broker import DevBroker, MemoryEngine
from cloud_engine.bus.topics import ensure_topics

PARTITIONS = 8


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def consume(
    bootstrap: str, topics: list[str], group: str, wait_ms: int, stop: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            if await consumer.getmany(timeout_ms=200):
                await consumer.commit()
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace) -> float:
    topics = [f"polling{i}.events" for i in range(args.topics)]
    broker = DevBroker(memory_engine=args.engine)
    bootstrap = broker.start()
    assert broker._process is not None
    pids = {"broker": broker._process.pid}
    if broker._store is not None:
        pids["store"] = broker._store.pid
    stop = asyncio.Event()
    cores = 0.0
    try:
        await ensure_topics(bootstrap, topics, PARTITIONS)
        groups = [
            asyncio.create_task(consume(bootstrap, topics, f"g{g}", args.fetch_wait_ms, stop))
            for g in range(args.groups)
        ]
        await asyncio.sleep(12)  # the groups' joins (Tansu holds a first join ~5 s)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        rounds = 0
        for target in args.history:
            per_partition = target // (len(topics) * PARTITIONS)
            began = time.perf_counter()
            while rounds < per_partition:  # one batch per partition a round
                sent = [
                    await producer.send(t, b"x" * 200, partition=p)
                    for t in topics
                    for p in range(PARTITIONS)
                ]
                await asyncio.gather(*sent)
                rounds += 1
            produced_s = time.perf_counter() - began
            await asyncio.sleep(5)  # the groups catch up
            before = {n: cpu_seconds(p) for n, p in pids.items()}
            await asyncio.sleep(args.seconds)
            used = {n: (cpu_seconds(p) - before[n]) / args.seconds for n, p in pids.items()}
            cores = sum(used.values())
            print(
                f"{args.groups} groups x {len(topics) * PARTITIONS} partitions,"
                f" {rounds * len(topics) * PARTITIONS} batches (produced in {produced_s:.1f}s),"
                f" idle {args.seconds:g}s: "
                + ", ".join(f"{n} {c:.2f} cores" for n, c in used.items()),
                flush=True,
            )
        await producer.stop()
        stop.set()
        await asyncio.gather(*groups)
    finally:
        broker.stop()
    return cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=get_args(MemoryEngine), default="tansu")
    parser.add_argument("--topics", type=int, default=6)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--history", default="0,2400", help="batches in all at each checkpoint")
    parser.add_argument("--fetch-wait-ms", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    args.history = [int(x) for x in args.history.split(",")]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cores = asyncio.run(run(args))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"broker_idle_cores={cores:.2f}")


if __name__ == "__main__":
    main()
