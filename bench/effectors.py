"""Effector throughput on libvirt's test driver, and request-to-Running of a
real QEMU guest, both through the whole path: command service -> event store
-> relay (its own process, `cloud-engine relay`) -> Kafka (the dev broker) ->
projection worker (read models) and EffectorService -> libvirt -> result on
the results topic.

Part 1, effector_items_per_s: N VMs (1 vCPU, 64 MiB, no disks, no NICs) are
created, placed on one host whose libvirt URI is test:///default and
start-requested through the command service. Once the read models reflect
every start request, an EffectorService serving that zone starts (its
consumer group joins, not timed). Each work item is one vm.start: the VM and
host rows and the VM's volumes and NICs (none) read from the read models,
the domain observed, defined and started on the test driver, the result
published with acks=all. items/s = results / (first event of these VMs
handed to the effector -> last result acknowledged by the broker); the
effector's reconciler runs beside it, as deployed. Baseline, same process:
Executor.run (vm.start) called in a loop on the same kind of VmPlan, built
in memory (no Kafka, no database).

Part 2, qemu_start_s: a host on qemu:///system, a dir pool under a temporary
directory and K VMs with a 64 MiB qcow2 root volume each (created by an
effector and attached; not timed). Timed per VM: from just before
RequestVmStart is submitted to the command service until the effector
published its vm.start result (succeeded, observed running); the domain is
destroyed (not timed) before the next run. Baseline, same process: raw
libvirt defineXML + create of the same kind of domain (compute.domain_xml,
one qcow2 disk in the same pool).

Everything created on qemu:///system (domains, the pool and its volumes)
carries a unique name prefix and is removed at the end, also on failure.
Part 2 runs first so that no QEMU guest runs during part 1.

    python bench/effectors.py [--items N] [--qemu-runs K]

Last line: effector_items_per_s=<n> qemu_start_s=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt
from aiokafka import AIOKafkaConsumer

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.work import WorkItem, work_id
from cloud_engine.bus.work_results import EffectorResult, decode, results_topic
from cloud_engine.effectors.compute.domain_xml import domain_xml
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec
from cloud_engine.effectors.desired import HostView, VmSize, VmView
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.handlers.vm import VmPlan
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.effectors.storage.pools import pool_path
from cloud_engine.effectors.storage.spec import VolumeSpec
from cloud_engine.effectors.storage.volumes import StorageDriver
from cloud_engine.engine.commands import AggregateVersion, Command, CommandResult
from cloud_engine.engine.commands.compute import CreateVm, PlaceVm, RequestVmStart
from cloud_engine.engine.commands.storage import (
    AttachVolume,
    CreateVolume,
    MarkVolumeCreated,
    RequestVolumeCreation,
)
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VmSpec
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.pg import connect
from cloud_engine.infra.settings import load_settings
from cloud_engine.projections.status import wait_for_position, wait_for_versions
from cloud_engine.projections.worker import ProjectionWorker, consumer_config
from tests.fabric import Fabric as BuiltFabric
from tests.fabric import FabricSpec, HostSpec, PoolSpec, TemplateSpec, build

ROOT = Path(__file__).resolve().parent.parent
TEST_URI = "test:///default"
QEMU_URI = "qemu:///system"
TOPIC_PREFIX = "cloudengine"
PARTITIONS = 8
MiB = 1024 * 1024
VM_SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
ROOT_VOLUME_BYTES = 64 * MiB


# -- fabric and commands ----------------------------------------------------------


Fabric = BuiltFabric[UUID]


def create_fabric(service: CommandService, name: str, libvirt_uri: str, pool_url: str) -> Fabric:
    """Zone, pod, cluster, one host on libvirt_uri, a dir pool and a ready template."""
    spec = FabricSpec(
        zone=name,
        hosts=(HostSpec(libvirt_uri=libvirt_uri, cpu_cores=4096, ram_mb=2**24),),
        pools=(PoolSpec(url=pool_url, capacity_bytes=1 << 40),),
        templates=(TemplateSpec(url="https://images.example/tiny.qcow2", size_bytes=MiB),),
    )
    return build(service, spec)


def execute_all(service: CommandService, commands: Sequence[Command]) -> list[CommandResult]:
    """Submitted together (the command service group-commits them), in order."""
    futures = [service.submit(c) for c in commands]
    return [f.result(300) for f in futures]


def create_vms(fabric: Fabric, vms: Sequence[UUID]) -> list[Command]:
    return [
        CreateVm(
            id=vm,
            account="bench",
            name=f"vm{n}",
            zone_id=fabric.zone,
            template_id=fabric.template,
            spec=VM_SPEC,
        )
        for n, vm in enumerate(vms)
    ]


async def wait_projected(target: DatabaseTarget, results: Iterable[CommandResult]) -> None:
    """Until the read models reflect every version these commands stored."""
    latest: dict[UUID, AggregateVersion] = {}
    position = 0
    for result in results:
        position = max(position, result.position or 0)
        for v in result.versions:
            if v.id not in latest or latest[v.id].version < v.version:
                latest[v.id] = v
    conn = await connect(target)
    try:
        await wait_for_position(conn, target.schema, position, timeout=300)
        await wait_for_versions(conn, target.schema, list(latest.values()), timeout=300)
    finally:
        await conn.close()


# -- the pipeline -----------------------------------------------------------------


class BenchEffector(EffectorService):
    """The effector service, noting when it handled and published what."""

    def __init__(self, target: DatabaseTarget, bootstrap: str, zone: UUID, names: Names) -> None:
        zones = frozenset({zone})
        super().__init__(
            target,
            effector_config(bootstrap, TOPIC_PREFIX, zones),
            zones=zones,
            names=names,
            name="effector@bench",
            stop_timeout_s=5.0,
        )
        self.watched: set[UUID] = set()
        self.first_watched_at: float | None = None
        self.cpu_at_first = 0.0  # this process's CPU time then (all threads)
        self.handled: dict[UUID, int] = {}  # aggregate id -> highest version handled
        # (kind, aggregate id) -> when its first result was acknowledged, and it.
        self.done: dict[tuple[str, UUID], tuple[float, EffectorResult]] = {}
        self.reports = 0  # the reconciler's (drift, unreachable hosts)

    async def handle(self, event: CloudEvent, _: object) -> None:
        if self.first_watched_at is None and event.aggregate_id in self.watched:
            self.first_watched_at = time.perf_counter()
            self.cpu_at_first = time.process_time()
        await super().handle(event, _)
        seen = self.handled.get(event.aggregate_id, 0)
        self.handled[event.aggregate_id] = max(seen, event.aggregate_version)

    async def publish(self, result: EffectorResult) -> None:
        await super().publish(result)
        now = time.perf_counter()
        if result.kind.startswith("drift.") or result.kind == "host.unreachable":
            self.reports += 1
            return
        self.done.setdefault((result.kind, result.aggregate_id), (now, result))


class Pipeline:
    """The relay as its own process, the projection worker and effectors as
    tasks of this event loop."""

    def __init__(self, target: DatabaseTarget, bootstrap: str) -> None:
        self.target = target
        self.bootstrap = bootstrap
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.relay: subprocess.Popen[bytes] | None = None
        self.effectors: dict[BenchEffector, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
        env.update(
            CLOUD_ENGINE_DATABASE_URL=self.target.url(),
            CLOUD_ENGINE_DATABASE_SCHEMA=self.target.schema,
            CLOUD_ENGINE_KAFKA_BOOTSTRAP=self.bootstrap,
            CLOUD_ENGINE_TOPIC_PREFIX=TOPIC_PREFIX,
            CLOUD_ENGINE_TOPIC_PARTITIONS=str(PARTITIONS),
            CLOUD_ENGINE_LOG_LEVEL="warning",
        )
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "cloud_engine.runner.cli", "relay"], env=env, cwd=str(ROOT)
        )
        worker = ProjectionWorker(self.target, consumer_config(self.bootstrap, TOPIC_PREFIX))
        self.tasks.append(asyncio.create_task(worker.run(self.stop)))

    def start_effector(self, zone: UUID, names: Names) -> BenchEffector:
        effector = BenchEffector(self.target, self.bootstrap, zone, names)
        stop = asyncio.Event()
        self.effectors[effector] = (stop, asyncio.create_task(effector.run(stop)))
        return effector

    async def stop_effector(self, effector: BenchEffector) -> None:
        stop, task = self.effectors.pop(effector)
        stop.set()
        await asyncio.wait_for(task, 60)

    def check(self) -> None:
        if self.relay is not None and self.relay.poll() is not None:
            raise RuntimeError(f"the relay exited with code {self.relay.returncode}")
        for task in [*self.tasks, *(t for _, t in self.effectors.values())]:
            if task.done() and task.exception() is not None:
                raise RuntimeError(f"a pipeline task failed: {task.exception()!r}")
            if task.done():
                raise RuntimeError("a pipeline task ended early")

    async def wait_results(
        self, effector: BenchEffector, kind: str, ids: Iterable[UUID], timeout: float
    ) -> list[tuple[float, EffectorResult]]:
        """The results (acknowledgement time, result) once all are in; the
        times are taken in publish(), so this poll's interval adds nothing."""
        keys = [(kind, i) for i in ids]
        deadline = time.monotonic() + timeout
        have = 0  # keys[:have] are in; cheap enough not to slow the effector
        while True:
            while have < len(keys) and keys[have] in effector.done:
                have += 1
            if have == len(keys):
                return [effector.done[k] for k in keys]
            self.check()
            if time.monotonic() > deadline:
                have = sum(k in effector.done for k in keys)
                raise TimeoutError(f"only {have} of {len(keys)} {kind} results in {timeout:.0f}s")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for stop, _ in self.effectors.values():
            stop.set()
        self.stop.set()
        tasks = [*self.tasks, *(t for _, t in self.effectors.values())]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.send_signal(signal.SIGTERM)
            try:
                self.relay.wait(30)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()


async def read_results(bootstrap: str, kind: str, ids: set[UUID], timeout: float = 60) -> int:
    """How many of these aggregates have a `kind` result on the results topic."""
    consumer = AIOKafkaConsumer(
        results_topic(TOPIC_PREFIX),
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: set[UUID] = set()
    try:
        deadline = time.monotonic() + timeout
        while len(found) < len(ids) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                for record in records:
                    result = decode(record.value)
                    if result.kind == kind and result.aggregate_id in ids:
                        found.add(result.aggregate_id)
    finally:
        await consumer.stop()
    return len(found)


# -- part 1: work items on the test driver --------------------------------------


def baseline_items_per_s(items: int, names: Names) -> float:
    """Executor.run (vm.start) in a loop on in-memory plans: no Kafka, no database."""
    executor = Executor("effector@baseline", names=names, stop_timeout_s=5.0)
    zone = uuid.uuid4()
    host = HostView(
        id=uuid.uuid4(),
        version=1,
        name="h",
        zone_id=zone,
        state="Enabled",
        libvirt_uri=TEST_URI,
    )
    size = VmSize(cpus=VM_SPEC.cpus, ram_mb=VM_SPEC.ram_mb, root_disk_gb=VM_SPEC.root_disk_gb)
    work: list[tuple[WorkItem, VmPlan]] = []
    for n in range(items):
        vm = VmView(
            id=uuid.uuid4(),
            version=3,
            name=f"vm{n}",
            zone_id=zone,
            state="Starting",
            spec=size,
            host_id=host.id,
            pool_id=uuid.uuid4(),
        )
        item = WorkItem(
            work_id=work_id(vm.id, 3),
            kind="vm.start",
            aggregate_id=vm.id,
            version=3,
            position=n,
        )
        work.append((item, VmPlan(vm=vm, host=host)))
    try:
        # Connected before the clock starts.
        executor.hypervisor(TEST_URI).call("connect", lambda conn: conn.isAlive())
        started = time.perf_counter()
        results = [executor.run(item, plan) for item, plan in work]
        elapsed = time.perf_counter() - started
        failed = [r for r in results if r.outcome != "succeeded" or r.observed != "running"]
        if failed:
            raise RuntimeError(f"baseline: {len(failed)} items failed, e.g. {failed[0].error}")
        remove_domains(executor.hypervisor(TEST_URI).conn, names.prefix)
    finally:
        executor.close()
    return items / elapsed


async def effector_items_per_s(
    pipeline: Pipeline, service: CommandService, names: Names, pool_dir: Path, items: int
) -> float:
    fabric = await asyncio.to_thread(
        create_fabric, service, "bench-test", TEST_URI, str(pool_dir / "test")
    )
    vms = [uuid.uuid4() for _ in range(items)]
    started = time.perf_counter()
    await asyncio.to_thread(execute_all, service, create_vms(fabric, vms))
    await asyncio.to_thread(
        execute_all,
        service,
        [PlaceVm(vm_id=vm, host_id=fabric.host, pool_id=fabric.pool) for vm in vms],
    )
    requested = await asyncio.to_thread(
        execute_all, service, [RequestVmStart(vm_id=vm, host_id=fabric.host) for vm in vms]
    )
    stored = time.perf_counter() - started
    await wait_projected(pipeline.target, requested)
    print(
        f"part 1: {items} VMs created, placed and start-requested in {stored:.1f}s,"
        f" projected after {time.perf_counter() - started:.1f}s"
    )

    effector = pipeline.start_effector(fabric.zone, names)
    effector.watched.update(vms)
    joined = time.perf_counter()
    done = await pipeline.wait_results(effector, "vm.start", vms, timeout=max(120, items / 10))
    cpu = time.process_time() - effector.cpu_at_first
    first = effector.first_watched_at
    assert first is not None
    last = max(at for at, _ in done)
    failed = [r for _, r in done if r.outcome != "succeeded" or r.observed != "running"]
    reports = effector.reports
    await pipeline.stop_effector(effector)
    on_topic = await read_results(pipeline.bootstrap, "vm.start", set(vms))
    rate = len(done) / (last - first)
    print(
        f"effector: {len(done)} vm.start results ({on_topic} on the results topic,"
        f" {len(failed)} failed) in {last - first:.2f}s after the group joined"
        f" ({first - joined:.1f}s); reconciler reports meanwhile: {reports};"
        f" CPU of this process meanwhile: {1000 * cpu / len(done):.2f} ms/item"
    )
    if failed:
        raise RuntimeError(f"{len(failed)} work items failed, e.g. {failed[0].error}")
    if on_topic != items:
        raise RuntimeError(f"only {on_topic} of {items} results on the results topic")
    return rate


# -- part 2: a real QEMU guest ------------------------------------------------------


async def qemu_start_times(
    pipeline: Pipeline, service: CommandService, names: Names, pool_dir: Path, runs: int
) -> tuple[list[float], str]:
    """Request-to-Running of `runs` VMs; also the libvirt pool's name."""
    fabric = await asyncio.to_thread(
        create_fabric, service, "bench-qemu", QEMU_URI, str(pool_dir / "qemu")
    )
    vms = [uuid.uuid4() for _ in range(runs)]
    volumes = [uuid.uuid4() for _ in range(runs)]
    effector = pipeline.start_effector(fabric.zone, names)
    await asyncio.to_thread(
        execute_all,
        service,
        [
            *create_vms(fabric, vms),
            *(
                CreateVolume(
                    id=volume,
                    account="bench",
                    name=f"root{n}",
                    zone_id=fabric.zone,
                    size_bytes=ROOT_VOLUME_BYTES,
                    kind="root",
                )
                for n, volume in enumerate(volumes)
            ),
            *(RequestVolumeCreation(volume_id=v, pool_id=fabric.pool) for v in volumes),
        ],
    )
    created = await pipeline.wait_results(effector, "volume.create", volumes, timeout=120)
    for _, result in created:
        if result.outcome != "succeeded":
            raise RuntimeError(f"volume creation failed: {result.error}")
    ready = await asyncio.to_thread(
        execute_all,
        service,
        [
            *(MarkVolumeCreated(volume_id=v) for v in volumes),
            *(
                AttachVolume(volume_id=v, vm_id=vm, device_id=0)
                for v, vm in zip(volumes, vms, strict=True)
            ),
            *(PlaceVm(vm_id=vm, host_id=fabric.host, pool_id=fabric.pool) for vm in vms),
        ],
    )
    await wait_projected(pipeline.target, ready)
    placed = {v.id: v.version for r in ready[-runs:] for v in r.versions if v.id == r.aggregate_id}
    while any(effector.handled.get(vm, 0) < v for vm, v in placed.items()):
        pipeline.check()
        await asyncio.sleep(0.01)

    times: list[float] = []
    conn = await asyncio.to_thread(libvirt.open, QEMU_URI)
    try:
        for n, vm in enumerate(vms, 1):
            await asyncio.sleep(1.0)  # an idle effector, as for a lone request
            started = time.perf_counter()
            await service.execute_async(RequestVmStart(vm_id=vm, host_id=fabric.host))
            ((at, result),) = await pipeline.wait_results(effector, "vm.start", [vm], timeout=60)
            if result.outcome != "succeeded" or result.observed != "running":
                raise RuntimeError(f"vm.start failed: {result.outcome} {result.error}")
            dom = await asyncio.to_thread(conn.lookupByUUIDString, str(vm))
            if dom.info()[0] != libvirt.VIR_DOMAIN_RUNNING:
                raise RuntimeError(f"domain {dom.name()} is not running")
            times.append(at - started)
            disks = dom.XMLDesc(0).count("<disk ")
            print(f"  qemu start {n}: {at - started:.3f}s ({dom.name()}, {disks} disk)")
            await asyncio.to_thread(dom.destroy)
    finally:
        conn.close()
        await pipeline.stop_effector(effector)
    return times, names.pool(fabric.pool)


def qemu_baseline(names: Names, pool: str, runs: int) -> list[float]:
    """Raw defineXML + create of the same kind of domain, one qcow2 disk."""
    hv = Hypervisor(QEMU_URI)
    storage = StorageDriver(hv)
    times: list[float] = []
    try:
        directory = pool_path(hv, pool)
        for n in range(runs):
            volume = f"baseline-{n}.qcow2"
            storage.create(VolumeSpec(pool=pool, name=volume, size_bytes=ROOT_VOLUME_BYTES))
            spec = DomainSpec(
                uuid=uuid.uuid4(),
                name=f"{names.prefix}baseline-{n}",
                vcpus=VM_SPEC.cpus,
                memory_mb=VM_SPEC.ram_mb,
                disks=(DiskSpec(path=os.path.join(directory, volume), target="vda"),),
            )
            xml = domain_xml(spec)
            conn = hv.conn
            started = time.perf_counter()
            dom = conn.defineXML(xml)
            dom.create()
            times.append(time.perf_counter() - started)
            dom.destroy()
            dom.undefine()
    finally:
        hv.close()
    return times


def remove_domains(conn: libvirt.virConnect, prefix: str) -> None:
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            if dom.isActive():
                dom.destroy()
            try:
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                )
            except libvirt.libvirtError:  # the test driver knows no NVRAM flag
                dom.undefine()


def clean_up(uri: str, prefix: str) -> None:
    """Every domain and storage pool (with its volumes) named with prefix."""
    conn = libvirt.open(uri)
    try:
        remove_domains(conn, prefix)
        for pool in conn.listAllStoragePools(0):
            if pool.name().startswith(prefix):
                if pool.isActive():
                    for vol in pool.listAllVolumes(0):
                        vol.delete(0)
                    pool.destroy()
                pool.undefine()
    finally:
        conn.close()


# ----------------------------------------------------------------------------------


async def pipeline_parts(
    target: DatabaseTarget,
    bootstrap: str,
    service: CommandService,
    names: Names,
    pool_dir: Path,
    args: argparse.Namespace,
) -> tuple[list[float], list[float], float]:
    pipeline = Pipeline(target, bootstrap)
    try:
        pipeline.start()
        qemu, pool = await qemu_start_times(pipeline, service, names, pool_dir, args.qemu_runs)
        qemu_raw = await asyncio.to_thread(qemu_baseline, names, pool, args.qemu_runs)
        await asyncio.to_thread(clean_up, QEMU_URI, names.prefix)  # no guest runs in part 1
        rate = await effector_items_per_s(pipeline, service, names, pool_dir, args.items)
    finally:
        await pipeline.close()
    return qemu, qemu_raw, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--qemu-runs", type=int, default=5)
    args = parser.parse_args()
    # As deployed with CLOUD_ENGINE_LOG_LEVEL=warning: no line per result.
    configure_logging("console", "warning")
    names = Names(prefix=f"ce-b{uuid.uuid4().hex[:8]}-")

    # Other work on this (2-core) machine shows in the numbers: say how busy it was.
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    baseline = baseline_items_per_s(args.items, names)
    print(f"baseline: Executor.run (vm.start) in a loop on {TEST_URI}: {baseline:.0f} items/s")
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        broker = DevBroker()
        bootstrap = broker.start()
        store = EventStore(pg.target)
        service = CommandService(store)
        pool_dir = Path(tmp) / "pools"
        pool_dir.mkdir()
        try:
            qemu, qemu_raw, rate = asyncio.run(
                pipeline_parts(pg.target, bootstrap, service, names, pool_dir, args)
            )
        finally:
            try:
                clean_up(QEMU_URI, names.prefix)
            except libvirt.libvirtError as e:
                print(f"clean-up of {names.prefix}* on {QEMU_URI} failed: {e}", file=sys.stderr)
                raise
            finally:
                service.close()
                store.close()
                broker.stop()
                pg.stop()
    qemu_s = statistics.median(qemu)
    raw_s = statistics.median(qemu_raw)
    print(f"effector: {rate:.0f} items/s; ratio effector/baseline {rate / baseline:.2f}")
    print(
        f"qemu: request-to-Running median {qemu_s:.3f}s"
        f" (runs: {', '.join(f'{t:.3f}' for t in qemu)});"
        f" raw defineXML+create median {raw_s:.3f}s"
        f" (runs: {', '.join(f'{t:.3f}' for t in qemu_raw)}); ratio {qemu_s / raw_s:.2f}"
    )
    print(f"effector_items_per_s={rate:.0f} qemu_start_s={qemu_s:.2f}")


if __name__ == "__main__":
    main()
