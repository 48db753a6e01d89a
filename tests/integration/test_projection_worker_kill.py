"""A projection worker killed mid-batch (a real process, SIGKILL) loses nothing
and duplicates nothing.

The relay runs in this process; the worker runs as `cloud-engine projections
run` in its own. While a workload writes through the command service, the
worker is killed with SIGKILL twice, each time just after it committed a batch
with a backlog still ahead of it (so the next batch is in flight: its
transaction open, or committed with its Kafka offsets not yet), and restarted.
The last incarnation catches up; its read models must then equal a rebuild
from the store, and every host must hold exactly the reservations the workload
left on it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.engine.commands.fabric import ReleaseHostCapacity, ReserveHostCapacity
from cloud_engine.engine.commands.network import AllocateIp, ReleaseIp
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra import tables
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Rebuild
from tests.integration.cli_process import CliProcess, cli_env
from tests.integration.test_projection_worker import setup_fabric
from tests.integration.test_projections import _connect, checksum

pytestmark = pytest.mark.postgres

KILLS = 2
# The workload keeps writing until the last worker has started (so events flow
# through every kill), within these bounds.
MIN_STEPS = 1500
MAX_STEPS = 6000
STEP_PAUSE = 0.002
# A restarted member of the group may wait out the session timeout (10 s,
# aiokafka's default) before the broker gives it the partitions.
START_TIMEOUT = 45.0
CATCH_UP_TIMEOUT = 90.0


@dataclass
class Expected:
    """What the workload left: reservations per host, IPs held and released."""

    reservations: dict[uuid.UUID, dict[uuid.UUID, tuple[int, int]]] = field(default_factory=dict)
    allocated: set[uuid.UUID] = field(default_factory=set)
    released: set[uuid.UUID] = field(default_factory=set)
    steps: int = 0


def workload(
    service: CommandService, rng: random.Random, until: threading.Event, expected: Expected
) -> None:
    fabric = setup_fabric(service)
    expected.reservations = {h: {} for h in fabric.hosts}
    held: list[tuple[uuid.UUID, uuid.UUID]] = []
    ips: list[uuid.UUID] = []
    while expected.steps < MAX_STEPS and not (expected.steps >= MIN_STEPS and until.is_set()):
        expected.steps += 1
        action = rng.choice(["reserve", "reserve", "release", "allocate", "free"])
        try:
            if action == "reserve":
                host, vm = rng.choice(fabric.hosts), uuid.uuid4()
                cpus, ram = rng.randint(1, 2), rng.choice([256, 512])
                service.execute(ReserveHostCapacity(host_id=host, vm_id=vm, cpus=cpus, ram_mb=ram))
                expected.reservations[host][vm] = (cpus, ram)
                held.append((host, vm))
            elif action == "release" and held:
                host, vm = held.pop(rng.randrange(len(held)))
                service.execute(ReleaseHostCapacity(host_id=host, vm_id=vm))
                del expected.reservations[host][vm]
            elif action == "allocate":
                ip = service.execute(AllocateIp(network_id=fabric.network)).aggregate_id
                ips.append(ip)
                expected.allocated.add(ip)
            elif action == "free" and ips:
                ip = ips.pop(rng.randrange(len(ips)))
                service.execute(ReleaseIp(ip_id=ip))
                expected.allocated.remove(ip)
                expected.released.add(ip)
        except DomainError:
            pass  # refused (full host or network): nothing stored, as designed
        time.sleep(STEP_PAUSE)


class WorkerProcess(CliProcess):
    """`cloud-engine projections run` on the test's schema and topic prefix."""

    def __init__(self, target: DatabaseTarget, broker: str, prefix: str, log: Path) -> None:
        env = cli_env(target, broker, prefix, {"CLOUD_ENGINE_TOPIC_PARTITIONS": "4"})
        super().__init__(["projections", "run"], env, log, append=False)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            self._out.close()

    def tail(self, lines: int = 20) -> str:
        return super().tail(lines)


async def applied_versions(conn: asyncpg.Connection, schema: str) -> int:
    """Events the read models reflect: the sum of the rows' versions (each
    aggregate's events are numbered 1..version, and a row is only ever moved
    forward one event at a time)."""
    parts = " UNION ALL ".join(
        f'SELECT version FROM "{schema}".{tables.table_name(t)}' for t in readmodel.AGGREGATES
    )
    try:
        return int(await conn.fetchval(f"SELECT coalesce(sum(version), 0) FROM ({parts}) v"))
    except asyncpg.UndefinedTableError:
        return 0  # the worker has not prepared its tables yet


async def projection_position(conn: asyncpg.Connection, schema: str) -> int:
    try:
        return await readmodel.Applier(schema).position(conn)
    except asyncpg.UndefinedTableError:
        return 0


async def newest_row_position(conn: asyncpg.Connection, schema: str) -> int:
    parts = " UNION ALL ".join(
        f'SELECT position FROM "{schema}".{tables.table_name(t)}' for t in readmodel.AGGREGATES
    )
    return int(await conn.fetchval(f"SELECT coalesce(max(position), 0) FROM ({parts}) p"))


async def wait_for_advance(
    conn: asyncpg.Connection, schema: str, worker: WorkerProcess, beyond: int, what: str
) -> int:
    """Wait until the worker has committed a batch that moves the read models
    past `beyond` applied events; return the new count."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        applied = await applied_versions(conn, schema)
        if applied > beyond:
            return applied
        assert worker.alive(), f"{what}: the worker exited early:\n{worker.tail()}"
        assert time.monotonic() < deadline, (
            f"{what}: the worker applied nothing past {beyond} events in {START_TIMEOUT}s:\n"
            f"{worker.tail()}"
        )
        await asyncio.sleep(0.005)


async def test_worker_killed_mid_batch_loses_and_duplicates_nothing(
    pg_target: DatabaseTarget,
    service: CommandService,
    store: EventStore,
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
):
    schema = pg_target.schema
    stop = asyncio.Event()
    relay = Relay(pg_target, RelayConfig(bootstrap=broker, topic_prefix=topic_prefix, partitions=4))
    relay_task = asyncio.create_task(relay.run(stop))
    writing_may_end = threading.Event()
    expected = Expected()
    writer = asyncio.create_task(
        asyncio.to_thread(workload, service, random.Random(7), writing_may_end, expected)
    )
    conn = await _connect(pg_target)
    workers: list[WorkerProcess] = []
    try:
        applied = 0
        kills: list[tuple[int, int]] = []  # (applied at the kill, stored at the kill)
        for n in range(KILLS):
            worker = WorkerProcess(pg_target, broker, topic_prefix, tmp_path / f"worker-{n}.log")
            workers.append(worker)
            # Killed right after a batch commit, with a backlog ahead of it:
            # the next batch is being applied or its offsets are not yet
            # committed when SIGKILL lands.
            applied = await wait_for_advance(conn, schema, worker, applied, f"worker {n}")
            worker.kill()
            stored = store.max_position()
            kills.append((await applied_versions(conn, schema), stored))
            assert kills[-1][0] < stored, (
                f"worker {n} had caught up ({kills[-1][0]} of {stored}) when killed:"
                " nothing was in flight; write more or kill sooner"
            )
        last = WorkerProcess(pg_target, broker, topic_prefix, tmp_path / "worker-last.log")
        workers.append(last)
        await wait_for_advance(conn, schema, last, applied, "the last worker")
        writing_may_end.set()
        await writer
        total = store.max_position()
        assert total > 3000, f"only {total} events stored; the kills need batches in flight"

        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while (applied := await applied_versions(conn, schema)) != total:
            assert applied < total, f"read models reflect {applied} events, only {total} stored"
            assert last.alive(), f"the last worker exited:\n{last.tail()}"
            assert time.monotonic() < deadline, (
                f"after {CATCH_UP_TIMEOUT}s the read models reflect {applied} of {total}"
                f" events (kills at (applied, stored) {kills}):\n{last.tail()}"
            )
            await asyncio.sleep(0.1)
        # Checked last (a rebuild moves it): the batch that completed the rows
        # wrote the position in the same transaction.
        position = await projection_position(conn, schema)
        newest_row = await newest_row_position(conn, schema)
        live = await checksum(conn, schema)
        assert last.terminate() == 0, f"the last worker did not stop cleanly:\n{last.tail()}"
        stop.set()
        await relay_task

        # Nothing lost, nothing applied twice: a rebuild from the store agrees.
        await Rebuild(pg_target).run()
        assert await checksum(conn, schema) == live

        # And in the domain's terms: each host holds exactly the reservations
        # the workload left (a reservation applied twice or lost shows here).
        rows = await conn.fetch(f'SELECT id, data FROM "{schema}".rm_host')
        assert {r["id"] for r in rows} == set(expected.reservations)
        for r in rows:
            data = json.loads(r["data"])
            want = expected.reservations[r["id"]]
            held = data["reservations"].items()
            got = {uuid.UUID(vm): (v["cpus"], v["ram_mb"]) for vm, v in held}
            assert got == want, f"host {r['id']}"
            assert data["cpus_used"] == sum(c for c, _ in want.values())
            assert data["ram_used_mb"] == sum(m for _, m in want.values())
        ips = {
            r["id"]: r["state"]
            for r in await conn.fetch(f'SELECT id, state FROM "{schema}".rm_ip_address')
        }
        assert {i for i, s in ips.items() if s == "Allocated"} == expected.allocated
        assert {i for i, s in ips.items() if s == "Released"} == expected.released

        assert position == total, (
            f"every event is reflected (rows up to position {newest_row}) but the"
            f" projection position is {position}, not {total}"
        )
    finally:
        writing_may_end.set()
        for w in workers:
            if w.alive():
                w.process.kill()
                w.process.wait(10)
        stop.set()
        await asyncio.gather(relay_task, writer, return_exceptions=True)
        await conn.close()
