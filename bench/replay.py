"""Read-model rebuild speed (`cloud-engine replay all`) and its peak memory.

Stores N events (default 1,000,000) of a deploy-like mix: per VM, created,
placed, start requested, running, stop requested, stopped, start requested,
running (8 events), plus a capacity reservation on one of 100 hosts and, for
every other VM, its release: ~9.5 events per VM, ~105,000 VMs, hosts with
~15,000 events each. Then, each in a fresh child process so its peak RSS is
its own:

- the rebuild up to a quarter of the log (--to-position), then of the whole
  log: peak memory should not grow with the number of events;
- baseline: the same ordered scan through the same asyncpg cursor, rows
  fetched and dropped without decoding: the ceiling for reading the log here.

    python bench/replay.py [--events N]

Last line: replay_events_per_s=<n> peak_rss_mb=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from cloud_engine.bus.relay_log import RelayLog
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres, parse_database_url
from cloud_engine.infra.pg import connect
from cloud_engine.infra.settings import load_settings
from cloud_engine.projections import readmodel
from cloud_engine.projections.fold import PAGE
from cloud_engine.projections.replay import Rebuild

HOSTS = 100
SPEC = VmSpec(cpus=1, ram_mb=512, root_disk_gb=10)


def store_events(store: EventStore, total: int) -> None:
    zone = Zone.create("bench")
    hosts = [
        Host.create(
            zone_id=zone.id,
            pod_id=uuid.uuid4(),
            cluster_id=uuid.uuid4(),
            name=f"h{i}",
            cpu_cores=100_000,
            ram_mb=100_000_000,
            libvirt_uri="qemu+ssh://bench/system",
        )
        for i in range(HOSTS)
    ]
    pending: list[object] = list(zone.collect_events())
    for host in hosts:
        pending.extend(host.collect_events())
    stored = 0
    n = 0
    while stored + len(pending) < total:
        host = hosts[n % HOSTS]
        vm = VirtualMachine.create("acct", f"vm{n}", zone.id, uuid.uuid4(), SPEC)
        host.reserve(vm.id, SPEC.cpus, SPEC.ram_mb)
        vm.place(host.id, uuid.uuid4())
        vm.start_requested(host.id)
        vm.mark_running()
        vm.stop_requested()
        vm.mark_stopped()
        vm.start_requested(host.id)
        vm.mark_running()
        if n % 2:
            host.release(vm.id)
        pending.extend(vm.collect_events())
        pending.extend(host.collect_events())
        n += 1
        if len(pending) >= 1000:
            store.append(pending)  # type: ignore[arg-type]
            stored += len(pending)
            pending = []
            if stored % 100_000 < 1000:
                print(f"  stored {stored} events", flush=True)
    if pending:
        store.append(pending)  # type: ignore[arg-type]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child_replay(url: str, schema: str, to_position: int | None) -> tuple[int, float, float]:
    target = msgspec.structs.replace(parse_database_url(url), schema=schema)
    started = time.perf_counter()
    progress = asyncio.run(Rebuild(target).run(to_position=to_position))
    return progress.events, time.perf_counter() - started, _peak_rss_mb()


async def _scan(target: DatabaseTarget) -> tuple[int, float]:
    conn = await connect(target)
    events = RelayLog(target.schema, "bench").events
    started = time.perf_counter()
    count = 0
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(
                "SELECT originator_id, originator_version, topic, state, notification_id"
                f" FROM {events} ORDER BY originator_id, originator_version"
            )
            while rows := await cursor.fetch(PAGE):
                count += len(rows)
    finally:
        await conn.close()
    return count, time.perf_counter() - started


def _child_scan(url: str, schema: str) -> tuple[int, float, float]:
    target = msgspec.structs.replace(parse_database_url(url), schema=schema)
    count, seconds = asyncio.run(_scan(target))
    return count, seconds, _peak_rss_mb()


def _run_and_send(fn: Any, args: tuple[object, ...], results: Any) -> None:
    results.put(fn(*args))


def in_child(fn: object, *args: object) -> tuple[int, float, float]:
    """Run fn in a fresh process, so the peak RSS it reports is its own (not
    a pool worker: those are daemons and the rebuild starts processes)."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_run_and_send, args=(fn, args, results))
    child.start()
    result: tuple[int, float, float] = results.get()
    child.join()
    return result


async def _prepare(target: DatabaseTarget) -> None:
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--data-dir", help="keep the database here and reuse its events on the next run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=args.data_dir or tmp))
        store = EventStore(pg.target)
        try:
            if store.max_position() < args.events:
                store_events(store, args.events - store.max_position())
            total = store.max_position()
            print(f"stored {total} events")
            url, schema = pg.target.url(), pg.target.schema
            asyncio.run(_prepare(pg.target))
            scanned, scan_s, _ = in_child(_child_scan, url, schema)
            scan_rate = scanned / scan_s
            print(f"baseline: ordered scan without decoding: {scan_rate:,.0f} rows/s")
            quarter, quarter_s, quarter_rss = in_child(_child_replay, url, schema, total // 4)
            print(
                f"replay of {quarter:,} events: {quarter / quarter_s:,.0f} events/s,"
                f" peak RSS {quarter_rss:.0f} MiB"
            )
            events, seconds, peak_rss = in_child(_child_replay, url, schema, None)
            rate = events / seconds
            print(
                f"replay of {events:,} events: {rate:,.0f} events/s, peak RSS {peak_rss:.0f} MiB;"
                f" {rate / scan_rate:.2f} of the scan rate;"
                f" RSS at 4x the events: x{peak_rss / quarter_rss:.2f}"
            )
        finally:
            store.close()
            pg.stop()
    print(f"replay_events_per_s={rate:.0f} peak_rss_mb={peak_rss:.0f}")


if __name__ == "__main__":
    main()
