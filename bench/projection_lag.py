"""Projection lag: commit of an event to its row committed in the read models.

A writer process stores one event per command at a steady RATE (zones
enabled and disabled, through the command service); the relay runs as its
own process (`cloud-engine relay`), the projection worker in this process.
For each event the lag is the time its read-model transaction committed
minus the event's `ce_time` (taken just before the writer's commit). Baseline
in the same run: the relay bench's probe, a plain aiokafka consumer of the
same events (commit to receive), i.e. what the projection adds on top of the
bus.

    python bench/projection_lag.py [--rate R] [--seconds S]

Last line: projection_lag_p50_ms=<n> projection_lag_p99_ms=<n>
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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay import PARTITIONS, _write_steadily, percentile, store_events

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.settings import load_settings
from cloud_engine.projections.worker import ProjectionWorker, consumer_config


async def measure(
    target: DatabaseTarget, bootstrap: str, zones: list[Zone], rate: int, seconds: float
) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_DATABASE_URL=target.url(),
        CLOUD_ENGINE_DATABASE_SCHEMA=target.schema,
        CLOUD_ENGINE_KAFKA_BOOTSTRAP=bootstrap,
        CLOUD_ENGINE_TOPIC_PARTITIONS=str(PARTITIONS),
        CLOUD_ENGINE_LOG_LEVEL="warning",
    )
    relay = subprocess.Popen([sys.executable, "-m", "cloud_engine.runner.cli", "relay"], env=env)
    stop = asyncio.Event()
    worker = ProjectionWorker(target, consumer_config(bootstrap, "cloudengine"))
    lags: list[float] = []
    first_position = 0
    caught_up = asyncio.Event()
    initial = EventStore(target).max_position()

    def applied(events: list[CloudEvent]) -> None:
        now = time.time()
        for e in events:
            if e.position >= initial:
                caught_up.set()
            if first_position and e.position > first_position:
                lags.append((now - datetime.fromisoformat(e.time).timestamp()) * 1000)

    worker.on_applied = applied
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(caught_up.wait(), 300)
        await asyncio.sleep(1.0)
        first_position = initial
        writer = multiprocessing.get_context("spawn").Process(
            target=_write_steadily,
            args=(
                target.url(),
                target.schema,
                [(str(z.id), z.state) for z in zones],
                rate,
                seconds,
            ),
        )
        writer.start()
        while writer.is_alive():
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await task
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        broker = DevBroker()
        bootstrap = broker.start()
        store = EventStore(pg.target)
        try:
            zones = store_events(store, 20_000)[:5000]
            lags = asyncio.run(measure(pg.target, bootstrap, zones, args.rate, args.seconds))
        finally:
            store.close()
            broker.stop()
            pg.stop()
    print(f"events measured: {len(lags)} (sent ~{int(args.rate * args.seconds)})")
    p50, p99 = statistics.median(lags), percentile(lags, 0.99)
    print(f"projection_lag_p50_ms={p50:.1f} projection_lag_p99_ms={p99:.1f}")


if __name__ == "__main__":
    main()
