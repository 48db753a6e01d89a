"""Cold load of a hot host: with its aggregate snapshot, and without.

A host gets an event per reservation and release; this stores one with
--events events (reservations and releases of --held VMs at a time,
appended in batches as the command service's group commits do, with
snapshots taken every SNAPSHOT_EVERY events the way the service takes
them) into an embedded PostgreSQL, then times EventStore.load of it:

- cold load: the snapshot and the events after it (what every load does),
  the worst case: SNAPSHOT_EVERY - 1 events after the snapshot;
- baseline, same run: EventStore.load_from_events, every event folded
  (what every load did before snapshots).

"Cold" is the engine's: the aggregate is in no cache of the process; the
server's buffers are warm after the first repetition, as they are for a
host loaded again and again. Both states are checked equal.

    python bench/snapshots.py [--events 100000] [--repeat 21]

Last line: cold_load_100k_ms=<median> (named for the default --events)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_engine.engine import aggregate_snapshots as snapshots
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.settings import load_settings

BATCH = 500  # events per append, as a busy service's group commits


def fill(store: EventStore, events: int, held: int) -> Host:
    host = Host.create(
        zone_id=uuid.uuid4(),
        pod_id=uuid.uuid4(),
        cluster_id=uuid.uuid4(),
        name="hot",
        cpu_cores=256,
        ram_mb=1 << 20,
        libvirt_uri="test:///default",
    )
    store.append(host.collect_events())
    vms: list[uuid.UUID] = []
    pending: list[object] = []
    snapshot_due = False
    for n in range(events - 1):
        if len(vms) >= held or (vms and n % 2):
            host.release(vms.pop(0))
        else:
            vms.append(uuid.uuid4())
            host.reserve(vms[-1], 1, 512)
        pending += host.collect_events()
        snapshot_due |= host.version % snapshots.SNAPSHOT_EVERY == 0
        # The last SNAPSHOT_EVERY - 1 events without a snapshot: a load then
        # folds the most events it ever does after one.
        last_snapshot = events - snapshots.SNAPSHOT_EVERY + 1
        tail = host.version > last_snapshot
        if len(pending) >= BATCH or host.version >= last_snapshot:
            keep = snapshot_due and not tail
            store.append(pending, snapshot=[host] if keep else [])  # type: ignore[arg-type]
            pending, snapshot_due = [], False
    return host


def timed(load: object, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        load()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--held", type=int, default=40, help="VMs on the host at a time")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        try:
            store = EventStore(pg.target)
            try:
                started = time.perf_counter()
                host = fill(store, args.events, args.held)
                print(
                    f"a host of {host.version:,} events stored in"
                    f" {time.perf_counter() - started:.1f} s"
                    f" (snapshot every {snapshots.SNAPSHOT_EVERY})"
                )
                loaded = store.load(host.id)
                full = store.load_from_events([host.id])[host.id]
                assert loaded is not None and loaded.version == args.events
                assert {k: v for k, v in vars(loaded).items() if k != "_pending_events"} == {
                    k: v for k, v in vars(full).items() if k != "_pending_events"
                }
                small = fill(store, 1, args.held)
                floor = timed(lambda: store.load(small.id), args.repeat)
                with_snapshot = timed(lambda: store.load(host.id), args.repeat)
                baseline = timed(
                    lambda: store.load_from_events([host.id]), max(3, args.repeat // 4)
                )
            finally:
                store.close()
        finally:
            pg.stop()
    median, worst = statistics.median(with_snapshot), max(with_snapshot)
    base = statistics.median(baseline)
    after = snapshots.SNAPSHOT_EVERY - 1
    print(f"baseline, every event folded: median {base:.1f} ms")
    print(f"floor, a host of one event: median {statistics.median(floor):.2f} ms")
    print(
        f"cold load, snapshot + {after} events after it: median {median:.2f} ms,"
        f" max {worst:.2f} ms ({base / median:.0f}x faster)"
    )
    print(f"cold_load_100k_ms={median:.2f}")


if __name__ == "__main__":
    main()
