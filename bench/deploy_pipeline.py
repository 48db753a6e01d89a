"""bench/deploy.py's timed runs through the pipeline: clients in a closed
loop submitting DeployVm, then deploys arriving at a paced rate (an open
loop), a consumer of the vm topic that sees each VM
Running, the check of the store afterwards, and each deploy's time split
into its steps from the stored events' timestamps."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from aiokafka import AIOKafkaConsumer
from deploy_fabric import VM_SPEC, Fabric, GiB, deploy_command
from deploy_processes import TOPIC_PREFIX, Components, CpuMeter

from cloud_engine.bus.naming import topic_for
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine

STARTED = "io.cloudengine.vm.started.v1"
FAILED = "io.cloudengine.vm.failed.v1"
DEPLOY_TIMEOUT_S = 120.0


# -- watching for Running -------------------------------------------------------------


@dataclass
class Seen:
    kind: str  # STARTED or FAILED
    at: float  # ce_time, as a Unix time
    received: float  # when this process read it


class Watcher:
    """Reads the vm topic; resolves each expected VM's future on its first
    vm.started or vm.failed event."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.expected: dict[str, asyncio.Future[Seen]] = {}
        self.early: dict[str, Seen] = {}

    def expect(self, vm_id: UUID) -> asyncio.Future[Seen]:
        future: asyncio.Future[Seen] = asyncio.get_running_loop().create_future()
        key = str(vm_id)
        if key in self.early:
            future.set_result(self.early.pop(key))
        else:
            self.expected[key] = future
        return future

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            topic_for(TOPIC_PREFIX, "vm"),
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=1000,
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                received = time.time()
                for records in batches.values():
                    for record in records:
                        self._note(record.headers, received)
        finally:
            await consumer.stop()

    def _note(self, headers: Sequence[tuple[str, bytes]], received: float) -> None:
        h = dict(headers)
        kind = h.get("ce_type", b"").decode()
        if kind not in (STARTED, FAILED):
            return
        subject = h["ce_subject"].decode()
        seen = Seen(kind, datetime.fromisoformat(h["ce_time"].decode()).timestamp(), received)
        future = self.expected.pop(subject, None)
        if future is None:
            self.early[subject] = seen
        elif not future.done():
            future.set_result(seen)


# -- the closed loop ----------------------------------------------------------------


@dataclass
class Sample:
    submitted: float  # wall clock, just before submission
    accepted_s: float  # DeployVm committed (what an API would answer 202 on)
    running_s: float  # to the vm.started event's ce_time
    received_s: float  # to this process reading that event
    ok: bool
    vm_id: UUID | None = None
    op_id: UUID | None = None


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    vms: list[UUID] = field(default_factory=list)
    ops: list[UUID] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        first = min(s.submitted for s in self.samples)
        return max(s.submitted + s.running_s for s in self.samples) - first


async def closed_loop(
    count: int, concurrency: int, one: Callable[[int], Awaitable[Sample]]
) -> list[Sample]:
    """`concurrency` clients, each starting its next deploy when its last is
    done, until `count` deploys are done."""
    numbers = itertools.count()
    samples: list[Sample] = []

    async def client() -> None:
        while (n := next(numbers)) < count:
            samples.append(await one(n))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return samples


async def open_loop(
    rate: float, seconds: float, seed: int, one: Callable[[int], Coroutine[Any, Any, Sample]]
) -> list[Sample]:
    """Deploys arriving as a Poisson stream of `rate` per second for
    `seconds`, each submitted at its time whatever is still in flight: the
    latency a client sees at that load, not bounded by a fixed number in
    flight (Little's law) as in the closed loop."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    start, at = loop.time(), 0.0
    tasks: list[asyncio.Task[Sample]] = []
    while (at := at + rng.expovariate(rate)) < seconds:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        tasks.append(asyncio.create_task(one(len(tasks))))
    return list(await asyncio.gather(*tasks))


async def deploys(
    service: CommandService,
    watcher: Watcher,
    components: Components,
    fabric: Fabric,
    count: int,
    concurrency: int,
    strategy: str,
    first: int = 0,
    paced: tuple[float, float, int] | None = None,  # (rate, seconds, seed): an open loop
) -> Run:
    run = Run()

    async def one(n: int) -> Sample:
        vm_id = uuid.uuid4()
        seen = watcher.expect(vm_id)
        submitted = time.time()
        result = await service.execute_async(deploy_command(fabric, first + n, vm_id, strategy))
        accepted = time.time()
        run.vms.append(vm_id)
        run.ops.append(result.aggregate_id)
        got = await asyncio.wait_for(seen, DEPLOY_TIMEOUT_S)
        return Sample(
            submitted=submitted,
            accepted_s=accepted - submitted,
            running_s=got.at - submitted,
            received_s=got.received - submitted,
            ok=got.kind == STARTED,
            vm_id=vm_id,
            op_id=result.aggregate_id,
        )

    async def watchdog() -> None:
        while True:
            components.check()
            await asyncio.sleep(0.5)

    guard = asyncio.create_task(watchdog())
    driver = closed_loop(count, concurrency, one) if paced is None else open_loop(*paced, one)
    work = asyncio.create_task(driver)
    done, _ = await asyncio.wait({guard, work}, return_when=asyncio.FIRST_COMPLETED)
    if work not in done:  # a component died
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        guard.result()  # raises the component's failure
    guard.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await guard
    run.samples = work.result()
    return run


def verify(store: EventStore, fabric: Fabric, runs: Sequence[Run]) -> None:
    """Every operation succeeded and every VM runs; capacity exactly accounted."""
    op_ids = [o for r in runs for o in r.ops]
    vm_ids = [v for r in runs for v in r.vms]
    # The last operations complete a moment after their VM is Running (the
    # engine's AdvanceOperation after the vm.started event).
    deadline = time.monotonic() + 30
    while True:
        ops = store.load_many(op_ids)
        bad = [o for o in ops.values() if not isinstance(o, Operation) or o.status != "succeeded"]
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if bad or len(ops) != len(op_ids):
        example = bad[0] if bad else None
        raise RuntimeError(
            f"{len(bad)} of {len(op_ids)} operations did not succeed, e.g."
            f" {getattr(example, 'status', None)}: {getattr(example, 'error', None)}"
        )
    vms = store.load_many(vm_ids)
    running = sum(isinstance(v, VirtualMachine) and v.state == "Running" for v in vms.values())
    if running != len(vm_ids):
        raise RuntimeError(f"only {running} of {len(vm_ids)} VMs are Running")
    hosts = store.load_many(fabric.hosts)
    used = sum(h.cpus_used for h in hosts.values() if isinstance(h, Host))
    if used != len(vm_ids) * VM_SPEC.cpus:
        raise RuntimeError(f"hosts account for {used} vCPUs, expected {len(vm_ids)}")
    pool = store.load(fabric.pool)
    want = len(vm_ids) * VM_SPEC.root_disk_gb * GiB
    if not isinstance(pool, StoragePool) or pool.used_bytes != want:
        raise RuntimeError(
            f"pool accounts for {getattr(pool, 'used_bytes', None)} bytes, expected {want}"
        )


# The steps of a deploy as stored: (label, the event that ends the step).
STEPS = (
    ("DeployVm stored", "Operation.Created"),
    ("placed (relay, manager: plan + PlaceOperation)", "VirtualMachine.Placed"),
    ("root volume recorded (relay, effector, recorder)", "Volume.CreationCompleted"),
    ("start requested (relay, manager: AdvanceOperation)", "VirtualMachine.StartRequested"),
    ("Running recorded (relay, effector, recorder)", "VirtualMachine.Started"),
)


def step_times(store: EventStore, samples: Sequence[Sample]) -> list[list[float]]:
    """Per step, each deploy's time from the previous step's event (the
    first from the request), read from the events' timestamps."""
    wanted: dict[UUID, Sample] = {}
    for s in samples:
        assert s.vm_id is not None and s.op_id is not None
        for aggregate in (s.vm_id, s.op_id, deploy_ids.volume_id(s.op_id, 0)):
            wanted[aggregate] = s
    at: dict[tuple[int, str], float] = {}
    ids = list(wanted)
    for start in range(0, len(ids), 500):
        for stored in store.recorder.select_events_of(ids[start : start + 500]):
            name = stored.topic.rsplit(":", 1)[-1]
            sample = wanted[UUID(str(stored.originator_id))]
            key = (id(sample), name)
            if key not in at:  # the first one (a VM starts once in a deploy)
                stamp = msgspec.json.decode(stored.state)["timestamp"]
                at[key] = datetime.fromisoformat(stamp).timestamp()
    steps: list[list[float]] = [[] for _ in STEPS]
    for s in samples:
        before = s.submitted
        for n, (_, name) in enumerate(STEPS):
            now = at[(id(s), name)]
            steps[n].append(now - before)
            before = now
    return steps


# -- the timed phases -----------------------------------------------------------------


@dataclass
class Results:
    run: Run
    cpu: dict[str, float]
    warnings: dict[str, int]
    steps: list[list[float]]
    single: Run
    single_steps: list[list[float]]
    paced: Run | None = None
    paced_steps: list[list[float]] = field(default_factory=list)
    chain_rate: float = 0.0
    chain_latency: list[float] = field(default_factory=list)
    idle: dict[str, float] = field(default_factory=dict)  # cores used with nothing arriving


async def pipeline_run(
    args: argparse.Namespace,
    service: CommandService,
    store: EventStore,
    components: Components,
    meter: CpuMeter,
    fabric: Fabric,
) -> Results:
    stop = asyncio.Event()
    watcher = Watcher(components.bootstrap)
    watching = asyncio.create_task(watcher.run(stop))
    try:
        started = time.perf_counter()
        warm = await deploys(
            service, watcher, components, fabric, args.warmup, args.warmup, args.strategy
        )
        if not all(s.ok for s in warm.samples):
            raise RuntimeError("a warm-up deploy failed")
        print(
            f"warm-up: {args.warmup} deploys Running after {time.perf_counter() - started:.1f}s"
            " (consumer groups joined, pools and base images made)"
        )
        # One deploy at a time: the pipeline's own latency, without queueing.
        single = await deploys(
            service, watcher, components, fabric, args.single, 1, args.strategy, first=args.warmup
        )
        await asyncio.sleep(1.0)  # let the tail (sweeps, reconciling) pass
        meter.start()
        run = await deploys(
            service,
            watcher,
            components,
            fabric,
            args.deploys,
            args.concurrency,
            args.strategy,
            first=args.warmup + args.single,
        )
        meter.stop()
        paced = None
        if args.rate > 0:
            # The closed loop leaves a tail (projections, operations finishing,
            # sweeps) that would queue ahead of the first paced deploys and
            # measure the closed loop's backlog instead of the paced rate.
            waited = await settle(meter)
            print(f"settled after the closed loop in {waited:.1f}s (pipeline CPU < 0.15 cores)")
            idle = await idle_cores(meter, args.idle_seconds)
            first = args.warmup + args.single + args.deploys
            paced = await deploys(
                service, watcher, components, fabric, 0, 0, args.strategy, first=first,
                paced=(args.rate, args.paced_seconds, args.seed),
            )  # fmt: skip
    finally:
        stop.set()
        await watching
    timed = [single, run] + ([paced] if paced else [])
    failed = [s for r in timed for s in r.samples if not s.ok]
    if failed:
        total = sum(len(r.samples) for r in timed)
        raise RuntimeError(f"{len(failed)} of {total} deploys failed")
    await asyncio.to_thread(verify, store, fabric, [warm, *timed])
    names = list(components.processes)
    return Results(
        run,
        meter.used,
        {n: components.warnings(n) for n in names},
        steps=await asyncio.to_thread(step_times, store, run.samples),
        single=single,
        single_steps=await asyncio.to_thread(step_times, store, single.samples),
        paced=paced,
        paced_steps=[]
        if paced is None
        else await asyncio.to_thread(step_times, store, paced.samples),
        idle=idle,
    )


async def idle_cores(meter: CpuMeter, seconds: float) -> dict[str, float]:
    """Each process's cores over `seconds` with nothing arriving (what the
    history left by the closed loop costs by itself: the dev broker's
    listings grow with it)."""
    before = meter.sample()
    await asyncio.sleep(seconds)
    after = meter.sample()
    used = {name: (after[name] - before.get(name, 0.0)) / seconds for name in after}
    print(
        f"idle for {seconds:g}s after it (cores): "
        + ", ".join(f"{n} {c:.2f}" for n, c in used.items())
    )
    return used


async def settle(meter: CpuMeter, idle_cores: float = 0.15, timeout: float = 30.0) -> float:
    """Wait until the pipeline's processes together use less than idle_cores
    for two half-second samples in a row; returns the seconds waited."""
    started = time.perf_counter()
    quiet = 0
    before = meter.sample()
    while quiet < 2 and time.perf_counter() - started < timeout:
        await asyncio.sleep(0.5)
        now = meter.sample()
        busy = {name: (now[name] - before.get(name, 0.0)) / 0.5 for name in now}
        quiet = quiet + 1 if sum(busy.values()) < idle_cores else 0
        before = now
    if quiet < 2:
        print("  still busy (cores): " + ", ".join(f"{n} {c:.2f}" for n, c in busy.items()))
    return time.perf_counter() - started
