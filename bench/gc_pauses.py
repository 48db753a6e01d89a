"""Full garbage-collection pauses of a long-running command writer.

Every process with a CommandService (the API, the engine, `up`) keeps an LRU
of aggregates. CPython's cyclic collector walks every tracked object on each
full collection, so the pause grows with the cache, and it stops the event
loop: every request in flight waits it out. Here the cache is filled as a
busy writer would fill it (more VMs than it holds, so it is full and
churning), then full collections are timed.

Rows, all in this process, one after the other:

- baseline: the old default cache (100,000 aggregates), nothing frozen;
- the new default (10,000), nothing frozen;
- the new default with the start-up heap frozen (gc.freeze(), as
  infra.process.run_on does before a component's loop starts), so that
  collections skip the modules' own objects.

    python bench/gc_pauses.py [--churn 1.5] [--collections 5]

Last line: full_gc_ms=<median, new default, frozen> baseline_ms=<n> ratio=<x>
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cloud_engine.api.app
import cloud_engine.engine.service  # noqa: F401
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.working_set import AggregateCache
from cloud_engine.infra.settings import Settings

OLD_DEFAULT = 100_000
SPEC = VmSpec(cpus=1, ram_mb=512, root_disk_gb=10)


def running_vm(n: int) -> VirtualMachine:
    """A VM as the writer caches it after a deploy: created, placed, running."""
    vm = VirtualMachine.create(
        f"tenant-{n % 20:02d}", f"vm-{n}", uuid.uuid4(), uuid.uuid4(), SPEC, (uuid.uuid4(),)
    )
    host = uuid.uuid4()
    vm.place(host, uuid.uuid4())
    vm.start_requested(host)
    vm.mark_running()
    vm.collect_events()
    return vm


def fill(size: int, churn: float) -> AggregateCache:
    cache = AggregateCache(size)
    for n in range(int(size * churn)):
        cache.put(running_vm(n))
    return cache


def full_collections(times: int) -> list[float]:
    pauses = []
    for _ in range(times):
        started = time.perf_counter()
        gc.collect()
        pauses.append((time.perf_counter() - started) * 1000)
    return pauses


def measure(name: str, size: int, churn: float, times: int, frozen: bool) -> float:
    gc.collect()
    if frozen:
        gc.freeze()
    cache = fill(size, churn)
    tracked = len(gc.get_objects())
    pauses = full_collections(times)
    median = statistics.median(pauses)
    print(
        f"{name}: cache {len(cache):,} aggregates, {tracked:,} objects tracked"
        f" ({gc.get_freeze_count():,} frozen), full collection median {median:.1f} ms"
        f" (min {min(pauses):.1f}, max {max(pauses):.1f})",
        flush=True,
    )
    del cache
    gc.unfreeze()
    gc.collect()
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--churn", type=float, default=1.5, help="VMs put per cache slot")
    parser.add_argument("--collections", type=int, default=5)
    args = parser.parse_args()
    new_default = Settings().aggregate_cache_size
    gc.collect()
    startup = len(gc.get_objects())
    print(f"start-up heap: {startup:,} objects tracked")
    baseline = measure("baseline (old default)", OLD_DEFAULT, args.churn, args.collections, False)
    plain = measure("new default", new_default, args.churn, args.collections, False)
    frozen = measure("new default, frozen", new_default, args.churn, args.collections, True)
    print(
        f"ratios over baseline: new default {plain / baseline:.3f}; frozen {frozen / baseline:.3f}"
    )
    print(f"full_gc_ms={frozen:.1f} baseline_ms={baseline:.1f} ratio={frozen / baseline:.3f}")


if __name__ == "__main__":
    main()
