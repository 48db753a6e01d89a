"""HTTP API latency: command accept at 200 concurrent clients, and reads
(GET a VM, list a filtered page) with 100,000 VMs in the read model.

Setup, all started here: an embedded PostgreSQL in a temporary directory;
the event store and command service; a fabric through the command service
(1 zone, pod and cluster, 100 hosts, a pool, 5 Ready templates, one network
per account); then 100,000 VMs in 20 accounts. The VMs are real domain
events, made by the aggregate's own methods (VirtualMachine.create, place,
start_requested, mark_running, stop_requested, mark_stopped: what the
commands record) and appended to the log 1,000 events per transaction,
skipping only the command handlers' cross-checks (host capacity is not
reserved for them): 40-60 s here, where the ~440,000 equivalent commands
at the ~4,000 commands/s bench/commands.py measures would take ~2 min.
rm_vm is then filled by the projection rebuild (projections.replay.Rebuild,
what `cloud-engine replay all` runs), so every row is the domain's fold of
its events. 5,000 VMs per account, ~1,000 per host; 70 % Running, 25 %
Stopped, 5 % Starting. Then VACUUM ANALYZE and a CHECKPOINT, which
autovacuum and the checkpointer would do on their own some time after such
a load, so they do not land in a timed phase.

The server is the API as `cloud-engine api` runs it: create_app on the same
command service and store, served by ApiServer (uvicorn; HTTP/1.1 by h11,
on uvloop unless --event-loop asyncio), access log on (JSON lines at info
level, into a file). The clients run in a separate process: raw HTTP/1.1 over asyncio
streams on loopback, one keep-alive connection per client (reopened, inside
the timed request, when idle longer than uvicorn's 5 s keep-alive), user
tokens (one per account); latency is from writing the request to reading
the whole response body. Neither process keeps the 100,000 VM refs in its
cyclic GC's way while timing (see GcPauses and read_phases); the server
reports its own full collections.

Timed, in this order:

1. accept, closed loop: 200 clients, each POSTing VM deploys (a new
   Idempotency-Key each; 202 with the operation) back to back. With no think
   time, 200 requests are always in flight, so latency = 200 / throughput
   (Little's law): this measures the server's capacity.
2. accept, paced: 200 clients, each sending deploys at exponential
   (Poisson) intervals, together --rate per second, for --seconds.
3. for each concurrency in --read-clients (default 1 and 8), clients back
   to back: GET /v1/vms/{id} of a random VM of the client's account, then
   GET /v1/vms, 50 rows, three filtered kinds: a user's VMs with
   state=Running (~3,500 of the account's 5,000), an admin's host_id=<host>
   (~1,000 rows: a filter on the JSON data), an admin's
   zone_id=<zone>&state=Stopped (~25,000 rows); a quarter of them first
   pages, the rest continuing from a random VM's (created_on, id) cursor,
   i.e. deep pages.

Baselines in the same run: for accept, CommandService.execute_async of the
same DeployVm (with an idempotency key) from 200 concurrent asyncio tasks in
the server's process, closed loop and paced the same way (no HTTP, JSON,
auth or reference checks); for reads, the SQL the API sends (captured from
api.queries), through asyncpg from the client process with the same picks
at the same concurrency (no HTTP, no JSON).

The command writer does not use psycopg's pipeline mode (engine/store.py
says why): under this load psycopg 3.3.9's pipeline loop hung it for good.

    python bench/api.py [--vms 100000] [--clients 200] [--per-client 10]
                        [--rate 250] [--seconds 10] [--read-clients 1,8]
                        [--reads 2000]

Last line: accept_p99_ms=<paced p99: issue 23's target, <= 20 ms at 250/s>
accept_closed_p99_ms=<closed loop p99> accepts_per_s=<closed loop: the maximum>
get_p99_ms=<n> list_p99_ms=<n>
list_p99_ms=<the worst list kind's p99>, the reads at the highest
--read-clients.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import os
import pickle
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, get_args
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_engine.api import tokens
from cloud_engine.api.app import create_app
from cloud_engine.api.cursor import Cursor, encode_cursor, query_digest
from cloud_engine.api.queries import fetch_one, fetch_page
from cloud_engine.api.resources import BY_TYPE
from cloud_engine.api.server import ApiServer
from cloud_engine.engine.commands import CommandContext
from cloud_engine.engine.commands.operations import DeployVm
from cloud_engine.engine.service import CommandService, WriterBatch
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres, parse_database_url
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.pg import connect, create_pool
from cloud_engine.infra.process import run_on, settle_heap
from cloud_engine.infra.settings import EventLoop, load_settings
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Rebuild
from tests.fabric import FabricSpec, NetworkSpec, PoolSpec, TemplateSpec, build, hosts

ACCOUNTS = [f"tenant-{n:02d}" for n in range(20)]
HOSTS = 100
TEMPLATES = 5
SPEC = VmSpec(cpus=1, ram_mb=512, root_disk_gb=10)
DEPLOY_SPEC = {"cpus": 1, "ram_mb": 512, "root_disk_gb": 10}
SAMPLE_PER_ACCOUNT = 5_000  # VMs per account the readers pick from
WARM_UP = 2  # untimed requests per client before each timed phase


# Setup -------------------------------------------------------------------------


FABRIC = FabricSpec(
    zone="bench",
    hosts=hosts(HOSTS, "qemu:///system", cpu_cores=4096, ram_mb=2**24),
    pools=(PoolSpec(name="pool", url="/srv/pool", capacity_bytes=10**16),),
    templates=tuple(
        TemplateSpec(
            name=f"t{n}", url=f"http://127.0.0.1/t{n}.qcow2", size_bytes=10**8, os_type="linux"
        )
        for n in range(TEMPLATES)
    ),
    networks=tuple(
        NetworkSpec(name="net", account=account, cidr=f"10.{100 + n}.0.0/16")
        for n, account in enumerate(ACCOUNTS)
    ),
)


@dataclass(frozen=True)
class Fabric:
    """What the bench reads of FABRIC once built: its ids, a network per account."""

    zone: UUID
    pool: UUID
    hosts: tuple[UUID, ...]
    templates: tuple[UUID, ...]
    networks: dict[str, UUID]


def create_fabric(service: CommandService) -> Fabric:
    made = build(service, FABRIC)
    networks = dict(zip(ACCOUNTS, made.networks, strict=True))
    return Fabric(made.zone, made.pool, made.hosts, made.templates, networks)


@dataclass(frozen=True)
class VmRef:
    id: UUID
    account: str
    host: UUID
    created_on: datetime


def store_vms(store: EventStore, fabric: Fabric, count: int, rng: random.Random) -> list[VmRef]:
    """`count` VMs as the commands would record them, 1,000 events per append."""
    refs: list[VmRef] = []
    pending: list[Any] = []
    for n in range(count):
        account = ACCOUNTS[n % len(ACCOUNTS)]
        host = fabric.hosts[rng.randrange(HOSTS)]
        vm = VirtualMachine.create(
            account,
            f"vm-{n}",
            fabric.zone,
            fabric.templates[n % TEMPLATES],
            SPEC,
            (fabric.networks[account],),
        )
        vm.place(host, fabric.pool)
        vm.start_requested(host)
        roll = rng.random()
        if roll >= 0.05:
            vm.mark_running()
        if roll >= 0.75:
            vm.stop_requested()
            vm.mark_stopped()
        pending.extend(vm.collect_events())
        refs.append(VmRef(vm.id, account, host, vm.created_on))
        if len(pending) >= 1000:
            store.append(pending)
            pending = []
    if pending:
        store.append(pending)
    return refs


async def settle(target: DatabaseTarget) -> None:
    """What autovacuum and the checkpointer would do on their own some time
    after a bulk load, done now, so it does not land in a timed phase."""
    conn = await connect(target)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def make_tokens(target: DatabaseTarget) -> tuple[str, dict[str, str]]:
    conn = await connect(target)
    try:
        admin, _ = await tokens.create(conn, target.schema, "admin", "ops")
        users = {a: (await tokens.create(conn, target.schema, "user", a))[0] for a in ACCOUNTS}
    finally:
        await conn.close()
    return admin, users


# Load generation (used by both processes) ---------------------------------------

# One request by client i; returns its latency in ms (the callee times only
# the request itself, not preparing it).
Call = Callable[[int], Awaitable[float]]


def since(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


@dataclass
class Timings:
    ms: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the phase
    late: int = 0  # paced sends that waited for the previous response
    reconnects: int = 0  # connections reopened after idling past keep-alive
    began: float = 0.0  # time.monotonic() (the same clock in every process)
    ended: float = 0.0
    writer: str = ""  # the command writer's batches meanwhile (WriterWatch)

    @property
    def per_second(self) -> float:
        return len(self.ms) / self.seconds if self.seconds else 0.0


async def closed_loop(clients: int, per_client: int, call: Call) -> Timings:
    """Every client sends its next request as soon as the last one answered."""
    out = Timings()

    async def client(i: int) -> None:
        for _ in range(per_client):
            out.ms.append(await call(i))

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    out.seconds = time.perf_counter() - started
    return out


async def paced(clients: int, rate: float, seconds: float, call: Call, seed: int) -> Timings:
    """Each client sends at exponential intervals (mean clients / rate), so
    the clients together offer `rate` requests/s as a Poisson stream; a
    client whose previous request has not answered yet sends when it does
    (counted as late). Latency is timed from the actual send."""
    out = Timings()
    loop = asyncio.get_running_loop()
    mean = clients / rate
    begin = loop.time() + 0.05
    end = begin + seconds

    async def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        due = begin + rng.expovariate(1 / mean)
        while due < end:
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.001:
                out.late += 1
            out.ms.append(await call(i))
            due += rng.expovariate(1 / mean)

    out.began = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    out.ended = time.monotonic()
    out.seconds = seconds
    return out


class WriterWatch:
    """The command writer's batches (CommandService.observe), with when each
    ended, so a phase's accept latency can be taken apart: the wait for a
    batch, then the batch (its commit included)."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, WriterBatch]] = []

    def add(self, batch: WriterBatch) -> None:
        self.batches.append((time.monotonic(), batch))

    def during(self, t: Timings) -> str:
        inside = [b for at, b in self.batches if t.began <= at <= t.ended]
        if not inside:
            return "no batches"
        ms = [b.seconds * 1e3 for b in inside]
        waits = [w * 1e3 for b in inside for w in b.waits]
        sizes = [float(b.commands) for b in inside]
        return (
            f"{len(inside)} batches, {percentile(sizes, 50):.0f} commands (p50),"
            f" {max(sizes):.0f} at most; batch p50 {percentile(ms, 50):.1f} p99"
            f" {percentile(ms, 99):.1f} ms; a command's wait for its batch p50"
            f" {percentile(waits, 50):.1f} p99 {percentile(waits, 99):.1f} ms"
        )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def summary(t: Timings) -> str:
    return (
        f"n={len(t.ms)} p50={percentile(t.ms, 50):.2f} ms p99={percentile(t.ms, 99):.2f} ms"
        f" max={max(t.ms):.2f} ms mean={statistics.fmean(t.ms):.2f} ms"
        f" ({t.per_second:,.0f}/s)"
    )


# HTTP client ---------------------------------------------------------------------


# uvicorn closes a connection idle for 5 s (timeout_keep_alive); like any
# pooling client, reconnect before reusing one idle for longer than this.
KEEP_ALIVE_S = 4.0


class Http:
    """One keep-alive HTTP/1.1 connection; requests are prepared bytes."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0.0
        self.reconnects = 0

    @classmethod
    async def open(cls, host: str, port: int) -> Http:
        http = cls(host, port)
        await http.connect()
        return http

    async def connect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )
        self.used = time.monotonic()

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send and read the answer; a reconnect, when one is due, is part
        of the request's time (a client pays it too)."""
        if time.monotonic() - self.used > KEEP_ALIVE_S:
            await self.connect()
            self.reconnects += 1
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        body = await self.reader.readexactly(length) if length else b""
        self.used = time.monotonic()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def request_bytes(
    method: str, path: str, token: str, body: Any = None, key: str | None = None
) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}"]
    if key is not None:
        lines.append(f"Idempotency-Key: {key}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


# The client process --------------------------------------------------------------


@dataclass
class Plan:
    host: str
    port: int
    target: str  # database URL, for the asyncpg baselines
    schema: str
    admin: str
    users: dict[str, str]
    fabric: Fabric
    by_account: dict[str, list[VmRef]]
    clients: int
    per_client: int
    rate: float
    seconds: float
    read_clients: list[int]  # concurrency levels, each in turn
    reads: int
    seed: int


@dataclass
class ListKind:
    name: str
    token: str
    filters: list[tuple[str, str]]  # query parameters, in the API's filter order
    after: list[VmRef]  # cursor positions to pick from
    account: str | None  # the account filter a user's list gets


class Unexpected(Exception):
    pass


def expect(status: int, wanted: int, body: bytes) -> None:
    if status != wanted:
        raise Unexpected(f"HTTP {status}, expected {wanted}: {body[:300]!r}")


def continued(refs: list[VmRef]) -> list[VmRef]:
    """Cursor positions: the oldest 90 % of the rows, so a page after one
    is never short."""
    ordered = sorted(refs, key=lambda r: (r.created_on, r.id))
    return ordered[: len(ordered) * 9 // 10]


def list_kinds(plan: Plan, rng: random.Random) -> list[ListKind]:
    account = ACCOUNTS[3]
    host = plan.fabric.hosts[17]
    everything = [r for refs in plan.by_account.values() for r in refs]
    return [
        ListKind(
            "user state=Running",
            plan.users[account],
            [("state", "Running")],
            continued(plan.by_account[account]),
            account,
        ),
        ListKind(
            "admin host_id=<host>",
            plan.admin,
            [("host_id", str(host))],
            continued([r for r in everything if r.host == host]),
            None,
        ),
        ListKind(
            "admin zone_id=<zone>&state=Stopped",
            plan.admin,
            [("state", "Stopped"), ("zone_id", str(plan.fabric.zone))],
            continued(rng.sample(everything, min(len(everything), 20_000))),
            None,
        ),
    ]


def page_path(kind: ListKind, after: VmRef | None) -> str:
    query = [f"{name}={value}" for name, value in kind.filters] + ["limit=50"]
    if after is not None:
        digest = query_digest(list(kind.filters))
        query.append("cursor=" + encode_cursor(Cursor(after.created_on, after.id, digest)))
    return "/v1/vms?" + "&".join(query)


class Captured:
    """Stands in for a pool to capture the SQL api.queries sends."""

    sql = ""
    args: tuple[Any, ...] = ()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.sql, self.args = sql, args
        return []

    async def fetchrow(self, sql: str, *args: Any) -> None:
        self.sql, self.args = sql, args


async def page_sql(schema: str, kind: ListKind, after: VmRef | None) -> tuple[str, tuple[Any, ...]]:
    resource = BY_TYPE["vm"]
    by_name = {f.name: f for f in resource.filters}
    filters: list[tuple[Any, object]] = [
        (by_name[n], UUID(v) if by_name[n].kind == "uuid" else v) for n, v in kind.filters
    ]
    if kind.account is not None:
        filters.append((by_name["account"], kind.account))
    cursor = None if after is None else Cursor(after.created_on, after.id, "")
    captured = Captured()
    await fetch_page(captured, schema, resource, filters, after=cursor, limit=50)  # type: ignore[arg-type]
    return captured.sql, captured.args


async def client_phases(plan: Plan) -> dict[str, Timings]:
    gc.freeze()  # the plan's 100,000 refs: see read_phases
    rng = random.Random(plan.seed)
    results: dict[str, Timings] = {}
    account_of = [ACCOUNTS[i % len(ACCOUNTS)] for i in range(plan.clients)]
    conns = [await Http.open(plan.host, plan.port) for _ in range(plan.clients)]
    counter = iter(range(10**9))

    def deploy(i: int) -> bytes:
        account = account_of[i]
        n = next(counter)
        body = {
            "name": f"web-{n}",
            "zone_id": str(plan.fabric.zone),
            "template_id": str(plan.fabric.templates[n % TEMPLATES]),
            "spec": DEPLOY_SPEC,
            "network_ids": [str(plan.fabric.networks[account])],
        }
        return request_bytes("POST", "/v1/vms", plan.users[account], body, uuid.uuid4().hex)

    async def accept(i: int) -> float:
        request = deploy(i)  # json.dumps is the client's cost: not timed
        started = time.perf_counter()
        status, body = await conns[i].send(request)
        ms = since(started)
        expect(status, 202, body)
        return ms

    await closed_loop(plan.clients, WARM_UP, accept)
    results["accept closed"] = await closed_loop(plan.clients, plan.per_client, accept)
    results["accept paced"] = await paced(plan.clients, plan.rate, plan.seconds, accept, plan.seed)
    results["accept paced"].reconnects = sum(c.reconnects for c in conns)
    for c in conns:
        c.close()

    print("  clients: accept phases done, reads next", flush=True)
    kinds = list_kinds(plan, rng)
    for clients in plan.read_clients:
        results.update(await read_phases(plan, kinds, clients, rng))
    return results


def stepper(lists: list[list[Any]]) -> Callable[[int], Any]:
    """next_of(i): client i's next item."""
    positions = [0] * len(lists)

    def next_of(i: int) -> Any:
        item = lists[i][positions[i]]
        positions[i] += 1
        return item

    return next_of


async def read_phases(
    plan: Plan, kinds: list[ListKind], clients: int, rng: random.Random
) -> dict[str, Timings]:
    """GETs and each kind of list at this many clients, then the same SQL
    through asyncpg with the same picks at the same concurrency."""
    results: dict[str, Timings] = {}
    at = f" @{clients}"
    per_client = max(1, plan.reads // clients)
    accounts = [ACCOUNTS[(5 + i) % len(ACCOUNTS)] for i in range(clients)]
    gets = [
        [rng.choice(plan.by_account[accounts[i]]) for _ in range(per_client + WARM_UP)]
        for i in range(clients)
    ]
    pages: dict[str, list[list[VmRef | None]]] = {
        k.name: [
            [
                None if rng.random() < 0.25 else rng.choice(k.after)
                for _ in range(per_client + WARM_UP)
            ]
            for _ in range(clients)
        ]
        for k in kinds
    }
    # The load generator's own heap (the picks above) is left out of its
    # cyclic GC, whose pauses would otherwise show up as server latency.
    gc.freeze()
    readers = [await Http.open(plan.host, plan.port) for _ in range(clients)]
    next_get = stepper(gets)

    async def get(i: int) -> float:
        ref: VmRef = next_get(i)
        request = request_bytes("GET", f"/v1/vms/{ref.id}", plan.users[ref.account])
        started = time.perf_counter()
        status, body = await readers[i].send(request)
        ms = since(started)
        expect(status, 200, body)
        return ms

    await closed_loop(clients, WARM_UP, get)
    results["GET /v1/vms/{id}" + at] = await closed_loop(clients, per_client, get)
    for kind in kinds:
        next_page = stepper(pages[kind.name])

        async def listing(i: int, kind: ListKind = kind, next_page: Any = next_page) -> float:
            request = request_bytes("GET", page_path(kind, next_page(i)), kind.token)
            started = time.perf_counter()
            status, body = await readers[i].send(request)
            ms = since(started)
            expect(status, 200, body)
            if b'"items":[]' in body:
                raise Unexpected(f"{kind.name}: an empty page")
            return ms

        await closed_loop(clients, WARM_UP, listing)
        results[f"list {kind.name}{at}"] = await closed_loop(clients, per_client, listing)
    for c in readers:
        c.close()

    target = parse_database_url(plan.target)
    pool = await create_pool(target, min_size=clients, max_size=clients)
    try:
        captured = Captured()
        await fetch_one(captured, plan.schema, BY_TYPE["vm"], uuid.uuid4())  # type: ignore[arg-type]
        get_sql = captured.sql
        next_get = stepper(gets)

        async def raw_get(i: int) -> float:
            vm_id = next_get(i).id
            started = time.perf_counter()
            row = await pool.fetchrow(get_sql, vm_id)
            ms = since(started)
            assert row is not None
            return ms

        await closed_loop(clients, WARM_UP, raw_get)
        results["baseline GET /v1/vms/{id}" + at] = await closed_loop(clients, per_client, raw_get)
        for kind in kinds:
            queries = [
                [await page_sql(plan.schema, kind, a) for a in ps] for ps in pages[kind.name]
            ]
            next_query = stepper(queries)

            async def raw_list(i: int, next_query: Any = next_query) -> float:
                sql, args = next_query(i)
                started = time.perf_counter()
                rows = await pool.fetch(sql, *args)
                ms = since(started)
                assert rows
                return ms

            await closed_loop(clients, WARM_UP, raw_list)
            results[f"baseline list {kind.name}{at}"] = await closed_loop(
                clients, per_client, raw_list
            )
    finally:
        await pool.close()
    return results


def client_process(pickled: bytes, out: Any) -> None:
    try:
        out.put(asyncio.run(client_phases(pickle.loads(pickled))))
    except BaseException as error:
        out.put(error)
        raise


# The server process --------------------------------------------------------------


async def service_baseline(
    service: CommandService, fabric: Fabric, clients: int, per_client: int, rate: float,
    seconds: float, seed: int,
) -> dict[str, Timings]:  # fmt: skip
    counter = iter(range(10**9))

    async def deploy(i: int) -> float:
        account = ACCOUNTS[i % len(ACCOUNTS)]
        n = next(counter)
        command = DeployVm(
            account=account,
            name=f"base-{n}",
            zone_id=fabric.zone,
            template_id=fabric.templates[n % TEMPLATES],
            spec=SPEC,
            network_ids=(fabric.networks[account],),
        )
        context = CommandContext(
            actor=f"api:{account}:bench", request_id=uuid.uuid4().hex,
            idempotency_key=uuid.uuid4().hex,
        )  # fmt: skip
        started = time.perf_counter()
        await service.execute_async(command, context)
        return since(started)

    await closed_loop(clients, WARM_UP, deploy)
    return {
        "baseline accept closed": await closed_loop(clients, per_client, deploy),
        "baseline accept paced": await paced(clients, rate, seconds, deploy, seed),
    }


class GcPauses:
    """Full (generation 2) collections in this process and how long each took."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.ms.append(since(self._started))

    def take(self) -> str:
        ms, self.ms = self.ms, []
        worst = f", longest {max(ms):.1f} ms" if ms else ""
        return (
            f"{len(ms)} full GC pauses in the server process{worst}"
            f" ({len(gc.get_objects()):,} objects tracked)"
        )

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


async def run(target: DatabaseTarget, args: argparse.Namespace) -> dict[str, Timings]:
    rng = random.Random(args.seed)
    store = EventStore(target, pool_size=4)
    service = CommandService(store)
    try:
        fabric = create_fabric(service)
        started = time.perf_counter()
        refs = store_vms(store, fabric, args.vms, rng)
        events = store.max_position()
        print(
            f"stored {args.vms:,} VMs ({events:,} events in the log)"
            f" in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        conn = await connect(target)
        try:
            await readmodel.prepare(conn, target.schema)
            started = time.perf_counter()
            progress = await Rebuild(target).run()
            in_rm = await conn.fetchval(f'SELECT count(*) FROM "{target.schema}".rm_vm')
        finally:
            await conn.close()
        print(
            f"read models rebuilt from {progress.events:,} events in"
            f" {time.perf_counter() - started:.1f} s; rm_vm has {in_rm:,} rows",
            flush=True,
        )
        started = time.perf_counter()
        await settle(target)
        print(f"vacuumed, analyzed, checkpointed in {time.perf_counter() - started:.1f} s")
        admin, users = await make_tokens(target)

        app = create_app(service, store, target)
        server = ApiServer(app, "127.0.0.1", 0)  # bound now, serving later
        by_account: dict[str, list[VmRef]] = {a: [] for a in ACCOUNTS}
        for ref in refs:
            by_account[ref.account].append(ref)
        plan = pickle.dumps(
            Plan(
                host=server.host,
                port=server.port,
                target=target.url(),
                schema=target.schema,
                admin=admin,
                users=users,
                fabric=fabric,
                by_account={a: r[:SAMPLE_PER_ACCOUNT] for a, r in by_account.items()},
                clients=args.clients,
                per_client=args.per_client,
                rate=args.rate,
                seconds=args.seconds,
                read_clients=args.read_clients,
                reads=args.reads,
                seed=args.seed,
            )
        )
        # A server does not hold every VM's ref: neither does this one
        # while it is timed (a heap that size costs ~100 ms per full GC).
        del refs, by_account
        settle_heap()  # as `cloud-engine api` does before serving
        pauses = GcPauses()
        watch = WriterWatch()
        unobserve = service.observe(watch.add)

        results = await asyncio.wait_for(
            service_baseline(
                service, fabric, args.clients, args.per_client, args.rate, args.seconds, args.seed
            ),
            timeout=300,
        )
        print(f"  baseline: done; {pauses.take()}", flush=True)

        stop = asyncio.Event()
        serving = asyncio.create_task(server.run(stop))
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        child = ctx.Process(target=client_process, args=(plan, out), name="bench-api-clients")
        child.start()
        try:
            got = await asyncio.to_thread(out.get)
        finally:
            await asyncio.to_thread(child.join)
            stop.set()
            await serving
        print(f"  server: {pauses.take()}", flush=True)
        pauses.close()
        unobserve()
        if isinstance(got, BaseException):
            raise RuntimeError("the client process failed") from got
        results.update(got)
        for name in ("baseline accept paced", "accept paced"):
            results[name].writer = watch.during(results[name])
        return results
    finally:
        service.close()
        store.close()


def report(results: dict[str, Timings], read_clients: list[int]) -> str:
    """Prints every phase; returns the last line."""
    for name, timings in results.items():
        print(f"{name}: {summary(timings)}")
        if timings.late:
            print(f"  {timings.late} sends waited for the previous response")
        if timings.reconnects:
            print(f"  {timings.reconnects} requests reconnected first (idle past keep-alive)")
        if timings.writer:
            print(f"  writer: {timings.writer}")

    def p99(name: str) -> float:
        return percentile(results[name].ms, 99)

    ratios = [
        f"{name} {p99(name) / p99('baseline ' + name):.2f}"
        for name in results
        if not name.startswith("baseline ") and "baseline " + name in results
    ]
    print("ratios, p99 over its baseline's p99: " + "; ".join(ratios))
    # The last line takes the reads at the highest concurrency measured.
    at = f" @{max(read_clients)}"
    lists = [p99(n) for n in results if n.startswith("list ") and n.endswith(at)]
    return (
        f"accept_p99_ms={p99('accept paced'):.1f} accept_closed_p99_ms={p99('accept closed'):.1f}"
        f" accepts_per_s={results['accept closed'].per_second:.0f}"
        f" get_p99_ms={p99('GET /v1/vms/{id}' + at):.1f} list_p99_ms={max(lists):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--per-client", type=int, default=10, help="closed-loop deploys each")
    parser.add_argument("--rate", type=float, default=250, help="paced deploys/s, all clients")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--read-clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8],
        help="concurrency levels of the reads, comma-separated",
    )
    parser.add_argument("--reads", type=int, default=2_000, help="per read kind and level")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--event-loop", choices=get_args(EventLoop), default="uvloop",
        help="the server's event loop (CLOUD_ENGINE_EVENT_LOOP); clients use asyncio's",
    )  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        # As deployed: JSON lines at info (an access line per request), here
        # into a file; PrintLoggerFactory keeps the stream it is given.
        log_file = open(os.path.join(tmp, "api.log"), "w")  # noqa: SIM115
        saved, sys.stderr = sys.stderr, log_file
        try:
            configure_logging("json", "info")
        finally:
            sys.stderr = saved
        pg = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
        try:
            # On the loop `cloud-engine api` runs the server on.
            results = run_on(run(pg.target, args), args.event_loop)
        finally:
            pg.stop()
            log_file.close()
    last = report(results, args.read_clients)
    print(f"total {time.perf_counter() - started:.0f} s")
    print(last)


if __name__ == "__main__":
    main()
