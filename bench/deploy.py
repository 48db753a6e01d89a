"""VM deploys end to end on libvirt's test driver: deploys/s at 100 requests
in flight, request-to-Running latency, and the planner over 10,000 hosts.

Setup. An embedded PostgreSQL and the dev broker (Tansu), as in the other
benches. Every component runs as its own process through its real entry
point, as it would be deployed: `cloud-engine relay`, `cloud-engine
projections run` (read models), `cloud-engine engine` (OperationManager,
which plans with the DeploymentPlanner over the read models and drives each
operation, and the ResultRecorder) and `cloud-engine effector --zone Z`
(EffectorService with its reconciler). This process plays the API: it
submits DeployVm to its own CommandService. The fabric is one zone, pod and
cluster with 40 hosts, a cluster-scope dir pool, a file image store and a
4 MiB qcow2 template served over loopback HTTP and fetched by the effector
(RequestTemplateDownload, not timed). Each VM: 1 vCPU, 64 MiB, a 1 GiB root
volume backed by the template (the effector copies the template into the
pool once as `tpl-<id>.qcow2` and makes a qcow2 overlay per VM), no NICs:
the network driver cannot realise a network on the test driver (it reads
the network's inactive XML, VIR_NETWORK_XML_INACTIVE, which the test driver
refuses). Strategy "dispersing", so the VMs spread over the hosts instead
of stacking on the first ones.

Hosts. By default each host has a libvirt test driver of its own,
`test:///<dir>/host-N.xml` (an empty node): the same in-memory driver as
test:///default, but one instance per host, like real hosts. With
--shared-default every host is `test:///default`, which is one instance per
process shared by all of them: one in-memory storage pool, and the test
driver's pools hold 100 GiB, so at most 99 deploys of 1 GiB in all ("Not
enough free space in pool" after that); and each host's reconciler round
(every 30 s) sees the other hosts' domains, and the driver's built-in
"test" domain, as unknown domains on it.

Timed. 100 concurrent clients each submit a DeployVm and wait until that VM
is Running, then submit the next (100 deploys in flight at every moment,
DEPLOYS in all, after a few untimed warm-up deploys that let every consumer
group join, and 20 deploys made one at a time: the pipeline's latency
without queueing). A deploy's latency is from just before its DeployVm is
submitted (wall clock) to the `ce_time` of the VM's `vm.started` event:
the moment the recorder's MarkVmRunning was written to the event store, in
the engine process, stamped before its commit. A consumer of the vm topic in
this process reads that event (its receive time is reported too).
deploys/s = DEPLOYS / (first submission -> last VM Running). With a fixed
number in flight, latency is that number over the rate (Little's law): 100
in flight at 50 deploys/s is 2 s each. Each deploy's time is also split into
its steps, from the timestamps of the events that end them (operation
created, VM placed, root volume created, VM start requested, VM started).
Afterwards the store is checked: every operation succeeded, every VM
Running, host capacity and pool space exactly accounted.

Baselines, in this process, after the pipeline stopped:
- the command chain: per deploy, the six commands the pipeline stores
  (DeployVm, PlaceOperation on a round-robin host, MarkVolumeCreated,
  AdvanceOperation, MarkVmRunning, AdvanceOperation), each awaited, through
  the same CommandService and database, 100 deploys in flight: what the
  write path alone allows for this workload. The ratio says what the bus,
  the read models, the planner and the effector cost on top;
- the effector's own work per deploy: Executor.run_volume (template-backed
  root volume) + Executor.run_vm (define and start) in a loop on one test
  driver host, no Kafka, no database.

The planner figure is bench/planner.py's planner_p99_ms() (10,000 hosts,
2,000 pools; the worse strategy's p99), run first, on its own.

CPU seconds of each process (this one, relay, projections, engine,
effector, broker, PostgreSQL) over the timed window are printed: on this
machine they all share two cores.

Nothing is created on libvirtd: the test driver lives in the memory of the
process that opened it (the effector; this process for the baseline, which
removes its domains and pool at the end).

    python bench/deploy.py [--deploys N] [--concurrency C] [--hosts H] [--shared-default]

Last line: deploys_per_s=<n> deploy_p50_ms=<n> deploy_p99_ms=<n> planner_p99_ms=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.server
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/planner.py

import msgspec
import psutil
from aiokafka import AIOKafkaConsumer
from planner import planner_p99_ms

from bus.broker import DevBroker
from bus.naming import topic_for
from effectors.desired import (
    HostView,
    ImageStoreView,
    PoolView,
    TemplateView,
    VmSize,
    VmView,
    VolumeView,
)
from effectors.executor import Executor, TemplateSource, VmPlan
from effectors.naming import Names
from effectors.work import WorkItem, operation_id
from engine.commands.base import Command
from engine.commands.compute import MarkVmRunning
from engine.commands.fabric import CreateCluster, CreatePod, CreateZone, RegisterHost
from engine.commands.operations import AdvanceOperation, DeployVm, PlaceOperation
from engine.commands.storage import (
    MarkTemplateDownloaded,
    MarkVolumeCreated,
    RegisterTemplate,
    RequestTemplateDownload,
)
from engine.commands.storage_fabric import CreateImageStore, CreateStoragePool
from engine.database import DatabaseTarget, EmbeddedPostgres
from engine.fabric.host import Host
from engine.fabric.storage_pool import StoragePool
from engine.logs import configure_logging
from engine.operations import deploy as deploy_ops
from engine.operations.operation import Operation
from engine.service import CommandService
from engine.settings import load_settings
from engine.store import EventStore
from engine.virtual.template import Template
from engine.virtual.vm import VirtualMachine, VmSpec

ROOT = Path(__file__).resolve().parent.parent
TOPIC_PREFIX = "cloudengine"
PARTITIONS = 8
MiB = 1024 * 1024
GiB = 1024 * MiB
TEMPLATE_BYTES = 4 * MiB
VM_SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
HOST_CORES = 32
HOST_CPU_OVERCOMMIT = 2.0  # 64 VMs of 1 vCPU per host
HOST_RAM_MB = 65536
STARTED = "io.cloudengine.vm.started.v1"
FAILED = "io.cloudengine.vm.failed.v1"
DEPLOY_TIMEOUT_S = 120.0
HOST_KINDS = {False: "a test driver each", True: "all on one shared test:///default"}


# -- fabric -------------------------------------------------------------------------


class Fabric(NamedTuple):
    zone: UUID
    hosts: list[UUID]
    pool: UUID
    template: UUID


def host_uris(count: int, directory: Path, shared: bool) -> list[str]:
    if shared:
        return ["test:///default"] * count
    directory.mkdir(parents=True, exist_ok=True)
    uris = []
    for n in range(count):
        path = directory / f"host-{n}.xml"
        path.write_text("<node/>\n")  # no domains, pools or networks to begin with
        uris.append(f"test://{path}")
    return uris


def create_fabric(
    service: CommandService, name: str, uris: Sequence[str], tmp: Path, template_url: str
) -> Fabric:
    """Zone, pod, cluster, one host per URI, a dir pool, a file image store
    and a registered template (Ready only once downloaded)."""
    run = service.execute
    zone = run(CreateZone(name=name)).aggregate_id
    pod = run(
        CreatePod(zone_id=zone, name="p", gateway="10.0.0.1", cidr="10.0.0.0/24")
    ).aggregate_id
    cluster = run(CreateCluster(zone_id=zone, pod_id=pod, name="c")).aggregate_id
    futures = [
        service.submit(
            RegisterHost(
                zone_id=zone,
                pod_id=pod,
                cluster_id=cluster,
                name=f"h{n}",
                cpu_cores=HOST_CORES,
                cpu_overcommit=HOST_CPU_OVERCOMMIT,
                ram_mb=HOST_RAM_MB,
                libvirt_uri=uri,
            )
        )
        for n, uri in enumerate(uris)
    ]
    hosts = [f.result(60).aggregate_id for f in futures]
    pool = run(
        CreateStoragePool(
            zone_id=zone,
            cluster_id=cluster,
            name="primary",
            scope="cluster",
            capacity_bytes=1 << 50,
            url=str(tmp / f"{name}-primary"),
        )
    ).aggregate_id
    run(
        CreateImageStore(
            zone_id=zone, name="secondary", url=str(tmp / f"{name}-secondary"), protocol="file"
        )
    )
    image = tmp / "www" / "tiny.qcow2"
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    template = run(
        RegisterTemplate(
            name="tiny",
            zone_id=zone,
            url=template_url,
            format="qcow2",
            size_bytes=TEMPLATE_BYTES,
            os_type="None",
            checksum=f"sha256:{digest}",
        )
    ).aggregate_id
    return Fabric(zone, hosts, pool, template)


def make_template_image(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), str(TEMPLATE_BYTES)],
        check=True,
        capture_output=True,
    )
    return path


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """directory over HTTP on 127.0.0.1; yields the base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def deploy_command(fabric: Fabric, n: int, vm_id: UUID, strategy: str) -> DeployVm:
    return DeployVm(
        account="bench",
        name=f"vm{n}",
        zone_id=fabric.zone,
        template_id=fabric.template,
        spec=VM_SPEC,
        strategy=strategy,  # type: ignore[arg-type]
        vm_id=vm_id,
    )


# -- the components, each its own process ----------------------------------------------


class Components:
    """relay, projections, engine and effector as `cloud-engine` processes;
    their output goes to a log file each (printed if one fails)."""

    def __init__(self, target: DatabaseTarget, bootstrap: str, logs: Path) -> None:
        self.target = target
        self.bootstrap = bootstrap
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
        env.update(
            CLOUD_ENGINE_DATABASE_URL=self.target.url(),
            CLOUD_ENGINE_DATABASE_SCHEMA=self.target.schema,
            CLOUD_ENGINE_KAFKA_BOOTSTRAP=self.bootstrap,
            CLOUD_ENGINE_TOPIC_PREFIX=TOPIC_PREFIX,
            CLOUD_ENGINE_TOPIC_PARTITIONS=str(PARTITIONS),
            CLOUD_ENGINE_LOG_LEVEL="warning",
            CLOUD_ENGINE_LOG_FORMAT="console",
        )
        out = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", *args],
            env=env,
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self._wait_connected(name)

    def _wait_connected(self, name: str, timeout: float = 60) -> None:
        """Until the process talks to the broker, i.e. has finished its
        event-store setup: of two processes running the eventsourcing
        library's CREATE OR REPLACE FUNCTION at the same moment one fails
        ("tuple concurrently updated"), so they start one after another."""
        port = int(self.bootstrap.rsplit(":", 1)[1])
        process = psutil.Process(self.processes[name].pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(psutil.Error):
                if any(c.raddr and c.raddr.port == port for c in process.net_connections("tcp")):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{name} did not connect to the broker in {timeout:.0f}s")

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode}:\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 30) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def warnings(self, name: str) -> int:
        path = self.logs / f"{name}.log"
        return sum("warning" in line or "error" in line for line in path.open(errors="replace"))

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class CpuMeter:
    """CPU seconds (user + system) of named processes between start() and
    stop(), with their exited children (qemu-img; PostgreSQL backends) and,
    for the ones named in `trees`, their live descendants too."""

    def __init__(self, pids: dict[str, int], trees: frozenset[str] = frozenset()) -> None:
        self.pids = pids
        self.trees = trees
        self._at_start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for name, pid in self.pids.items():
            total = 0.0
            try:
                root = psutil.Process(pid)
                family = [root, *(root.children(recursive=True) if name in self.trees else [])]
                for process in family:
                    with contextlib.suppress(psutil.Error):
                        t = process.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
            seconds[name] = total
        return seconds

    def start(self) -> None:
        self._at_start = self._sample()

    def stop(self) -> None:
        end = self._sample()
        self.used = {name: end[name] - self._at_start.get(name, 0.0) for name in end}


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


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


async def deploys(
    service: CommandService,
    watcher: Watcher,
    components: Components,
    fabric: Fabric,
    count: int,
    concurrency: int,
    strategy: str,
    first: int = 0,
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
    work = asyncio.create_task(closed_loop(count, concurrency, one))
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
        for aggregate in (s.vm_id, s.op_id, deploy_ops.volume_id(s.op_id, 0)):
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


def wait_until(
    what: str, probe: Callable[[], bool], components: Components, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        components.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- baselines ------------------------------------------------------------------------


async def command_chain(
    service: CommandService, fabric: Fabric, count: int, concurrency: int
) -> tuple[float, list[float]]:
    """The pipeline's six commands per deploy through the command service
    alone; (deploys/s, per-deploy latency in s)."""
    next_host = itertools.cycle(fabric.hosts)

    async def one(n: int) -> Sample:
        vm_id = uuid.uuid4()
        submitted = time.time()
        result = await service.execute_async(deploy_command(fabric, n, vm_id, "first-fit"))
        op = result.aggregate_id
        chain: list[Command] = [
            PlaceOperation(operation_id=op, host_id=next(next_host), pool_ids=(fabric.pool,)),
            MarkVolumeCreated(volume_id=deploy_ops.volume_id(op, 0)),
            AdvanceOperation(operation_id=op),
            MarkVmRunning(vm_id=vm_id),
        ]
        for command in chain:
            await service.execute_async(command)
        running = time.time() - submitted
        await service.execute_async(AdvanceOperation(operation_id=op))
        return Sample(submitted, 0.0, running, running, True)

    started = time.perf_counter()
    samples = await closed_loop(count, concurrency, one)
    elapsed = time.perf_counter() - started
    return count / elapsed, [s.running_s for s in samples]


def effector_alone(count: int, tmp: Path, template_url: str) -> float:
    """ms of effector work per deploy: run_volume (template-backed root) and
    run_vm (define + start) in a loop on one test driver host."""
    names = Names(prefix=f"ce-b{uuid.uuid4().hex[:8]}-")
    uri = host_uris(1, tmp / "baseline-hosts", shared=False)[0]
    executor = Executor("effector@baseline", names=names, stop_timeout_s=5.0)
    zone = uuid.uuid4()
    image = tmp / "www" / "tiny.qcow2"
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    template = TemplateView(
        id=uuid.uuid4(),
        version=3,
        zone_id=zone,
        state="Ready",
        url=template_url,
        format="qcow2",
        checksum=f"sha256:{digest}",
    )
    store = ImageStoreView(
        id=uuid.uuid4(),
        version=1,
        zone_id=zone,
        state="Enabled",
        url=str(tmp / "baseline-secondary"),
        protocol="file",
    )
    source = TemplateSource(template=template, store=store)
    host = HostView(
        id=uuid.uuid4(), version=1, name="h", zone_id=zone, state="Enabled", libvirt_uri=uri
    )
    pool = PoolView(
        id=uuid.uuid4(), version=1, zone_id=zone, state="Up", url=str(tmp / "baseline-primary")
    )
    size = VmSize(cpus=VM_SPEC.cpus, ram_mb=VM_SPEC.ram_mb, root_disk_gb=VM_SPEC.root_disk_gb)

    def deploy(n: int) -> None:
        vm = VmView(
            id=uuid.uuid4(),
            version=6,
            name=f"vm{n}",
            zone_id=zone,
            state="Starting",
            spec=size,
            host_id=host.id,
            pool_id=pool.id,
        )
        volume = VolumeView(
            id=uuid.uuid4(),
            version=2,
            zone_id=zone,
            state="Creating",
            size_bytes=VM_SPEC.root_disk_gb * GiB,
            pool_id=pool.id,
            template_id=template.id,
            host_id=host.id,
        )
        item = WorkItem(
            operation_id=operation_id(volume.id, 2),
            kind="volume.create",
            aggregate_id=volume.id,
            version=2,
            position=2 * n,
        )
        created = executor.run_volume(item, volume, pool, host, None, source)
        attached = VolumeView(
            id=volume.id,
            version=4,
            zone_id=zone,
            state="Attached",
            size_bytes=volume.size_bytes,
            pool_id=pool.id,
            vm_id=vm.id,
            device_id=0,
            template_id=template.id,
            host_id=host.id,
        )
        start = WorkItem(
            operation_id=operation_id(vm.id, 6),
            kind="vm.start",
            aggregate_id=vm.id,
            version=6,
            position=2 * n + 1,
        )
        started = executor.run_vm(start, VmPlan(vm=vm, host=host, disks=((attached, pool),)))
        for result in (created, started):
            if result.outcome != "succeeded":
                raise RuntimeError(f"effector baseline: {result.kind} failed: {result.error}")

    try:
        deploy(0)  # the template fetched and the pool's base image made, not timed
        started = time.perf_counter()
        for n in range(1, count + 1):
            deploy(n)
        elapsed = time.perf_counter() - started
    finally:
        conn = executor.hypervisor(uri).conn
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(names.prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for p in conn.listAllStoragePools(0):
            if p.name().startswith(names.prefix):
                for vol in p.listAllVolumes(0):
                    vol.delete(0)
                p.destroy()
                p.undefine()
        executor.close()
    return 1000 * elapsed / count


# -----------------------------------------------------------------------------------


def ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(values: Sequence[float]) -> str:
    return (
        f"p50 {ms(values, 0.5):.0f} / p90 {ms(values, 0.9):.0f} / p99 {ms(values, 0.99):.0f}"
        f" / max {1000 * max(values):.0f} ms"
    )


@dataclass
class Results:
    run: Run
    cpu: dict[str, float]
    warnings: dict[str, int]
    steps: list[list[float]]
    single: Run
    single_steps: list[list[float]]
    chain_rate: float = 0.0
    chain_latency: list[float] = field(default_factory=list)


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
    finally:
        stop.set()
        await watching
    failed = [s for s in [*single.samples, *run.samples] if not s.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {args.single + args.deploys} deploys failed")
    await asyncio.to_thread(verify, store, fabric, [warm, single, run])
    names = list(components.processes)
    return Results(
        run,
        meter.used,
        {n: components.warnings(n) for n in names},
        steps=await asyncio.to_thread(step_times, store, run.samples),
        single=single,
        single_steps=await asyncio.to_thread(step_times, store, single.samples),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deploys", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--single", type=int, default=20, help="deploys made one at a time")
    parser.add_argument("--strategy", choices=["first-fit", "dispersing"], default="dispersing")
    parser.add_argument(
        "--shared-default",
        action="store_true",
        help="every host on test:///default (one shared driver instance; see the docstring)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="print where the logs are kept")
    args = parser.parse_args()
    if args.shared_default and args.warmup + args.single + args.deploys > 95:
        parser.error("--shared-default: one in-memory pool of 100 GiB holds about 95 root volumes")
    configure_logging("console", "warning")

    # Other work on this (2-core) machine shows in the numbers: say how busy it was.
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    planner_ms = planner_p99_ms()
    print(f"planner: p99 {planner_ms:.3f} ms per plan over 10,000 hosts (bench/planner.py)")

    tmp = Path(tempfile.mkdtemp(prefix="cloud-engine-deploy-"))
    make_template_image(tmp / "www")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp)))
    broker = DevBroker(log_file=tmp / "broker.log")
    bootstrap = broker.start()
    store = EventStore(pg.target)
    service = CommandService(store)
    logs = tmp / "logs"
    logs.mkdir()
    components = Components(pg.target, bootstrap, logs)
    try:
        with serve(tmp / "www") as base_url:
            template_url = f"{base_url}/tiny.qcow2"
            # The test driver's pools hold 100 GiB each: at most 99 root volumes.
            per_deploy_ms = effector_alone(90, tmp, template_url)
            print(
                f"effector alone: run_volume + run_vm {per_deploy_ms:.2f} ms per deploy"
                f" ({1000 / per_deploy_ms:.0f} deploys/s on one thread)"
            )
            uris = host_uris(args.hosts, tmp / "hosts", args.shared_default)
            fabric = create_fabric(service, "bench", uris, tmp, template_url)
            components.start("relay", "relay")
            components.start("projections", "projections", "run")
            components.start("engine", "engine")
            components.start("effector", "effector", "--zone", str(fabric.zone))
            service.execute(RequestTemplateDownload(template_id=fabric.template))
            wait_until(
                "the template downloaded",
                lambda: getattr(store.load(fabric.template), "state", "") == "Ready",
                components,
                120,
            )
            assert isinstance(store.load(fabric.template), Template)
            meter = CpuMeter(
                {
                    "bench (API, watcher)": os.getpid(),
                    **{n: p.pid for n, p in components.processes.items()},
                    "broker": broker._process.pid if broker._process else -1,
                    "postgres": postmaster_pid(tmp),
                },
                trees=frozenset({"postgres"}),
            )
            results = asyncio.run(pipeline_run(args, service, store, components, meter, fabric))
        components.stop()
        # The same commands through the command service alone, on a fabric of
        # their own (nothing consumes them now).
        chain_fabric = create_fabric(
            service, "chain", ["test:///default"] * args.hosts, tmp, "http://127.0.0.1:9/x"
        )
        service.execute(RequestTemplateDownload(template_id=chain_fabric.template))
        service.execute(MarkTemplateDownloaded(template_id=chain_fabric.template))
        results.chain_rate, results.chain_latency = asyncio.run(
            command_chain(service, chain_fabric, args.deploys, args.concurrency)
        )
    except BaseException:
        for name in components.processes:
            print(f"--- {name} log (tail) ---\n{components.tail(name)}", file=sys.stderr)
        raise
    finally:
        components.stop()
        service.close()
        store.close()
        broker.stop()
        pg.stop()
        if args.keep_logs:
            print(f"logs kept in {logs}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    report(args, results, planner_ms, per_deploy_ms)


def print_steps(steps: Sequence[Sequence[float]]) -> None:
    for (label, _), times in zip(STEPS, steps, strict=True):
        print(f"    {label:<52} p50 {ms(times, 0.5):5.0f}  p90 {ms(times, 0.9):5.0f} ms")


def report(
    args: argparse.Namespace, results: Results, planner_ms: float, effector_ms: float
) -> None:
    run = results.run
    rate = len(run.samples) / run.elapsed
    running = [s.running_s for s in run.samples]
    alone = [s.running_s for s in results.single.samples]
    print(f"one deploy at a time ({len(alone)}): request-to-Running {describe(alone)}")
    print_steps(results.single_steps)
    print(
        f"end to end: {len(run.samples)} deploys, {args.concurrency} in flight, over"
        f" {args.hosts} hosts ({HOST_KINDS[args.shared_default]})"
        f" in {run.elapsed:.2f}s: {rate:.1f} deploys/s"
    )
    print(f"  request-to-Running (ce_time of vm.started): {describe(running)}")
    print(f"  DeployVm accepted (committed): {describe([s.accepted_s for s in run.samples])}")
    print(f"  vm.started read by this process: {describe([s.received_s for s in run.samples])}")
    print_steps(results.steps)
    wall = run.elapsed
    cpu = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in results.cpu.items())
    total = sum(results.cpu.values())
    print(
        f"  CPU over the {wall:.1f}s window: {cpu}; total {total:.1f}s"
        f" = {total / wall:.2f} cores of {os.cpu_count()}"
    )
    per = 1000 / len(run.samples)
    print(
        "  CPU per deploy: "
        + ", ".join(f"{name} {per * s:.1f} ms" for name, s in results.cpu.items())
    )
    print(f"  warning/error log lines: {results.warnings}")
    chain = results.chain_latency
    print(
        f"baseline (command chain, same 6 commands, {args.concurrency} in flight, no pipeline):"
        f" {results.chain_rate:.1f} deploys/s; to MarkVmRunning {describe(chain)}"
    )
    print(
        f"ratio end-to-end / baseline: throughput {rate / results.chain_rate:.2f},"
        f" p50 latency {statistics.median(running) / statistics.median(chain):.1f}x"
    )
    print(f"baseline (effector work alone): {effector_ms:.2f} ms per deploy")
    print(
        f"deploys_per_s={rate:.1f} deploy_p50_ms={ms(running, 0.5):.0f}"
        f" deploy_p99_ms={ms(running, 0.99):.0f} planner_p99_ms={planner_ms:.3f}"
    )


if __name__ == "__main__":
    main()
