"""Command throughput: the command service against plain Application.save.

Both sides run the same realistic mix through the same handlers on the same
embedded PostgreSQL, in one process: per VM, create it, reserve host capacity,
allocate an IP, place it and request its start (5 commands). The baseline is
the eventsourcing library's usual way: one Application.save per command, run
serially, with the library's aggregate cache on (no deep copies, no
fast-forward reads) so it pays only for its commits. Ours is the command
service with CLIENTS concurrent callers, so group commit can batch them.

    python bench/commands.py [--vms N] [--clients C]

Last line: commands_per_s=<n> baseline_per_s=<n> ratio=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from eventsourcing.application import AggregateNotFoundError

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.commands import Command, dispatch
from cloud_engine.engine.commands.compute import CreateVm, PlaceVm, RequestVmStart
from cloud_engine.engine.commands.hosts import ReserveHostCapacity
from cloud_engine.engine.commands.network import AllocateIp
from cloud_engine.engine.errors import NotFound
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore, _StoreApplication, store_environment
from cloud_engine.engine.virtual.vm import VmSpec
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres, parse_database_url
from cloud_engine.infra.settings import load_settings
from tests.fabric import FabricSpec, NetworkSpec, PoolSpec, TemplateSpec, hosts, plan

A = TypeVar("A", bound=Aggregate)
HOSTS = 8
NETWORKS = 4

SPEC = FabricSpec(
    zone="bench",
    hosts=hosts(HOSTS, "qemu:///system", cpu_cores=4096, ram_mb=2**24),
    pools=(PoolSpec(name="pool", url="/srv/pool", capacity_bytes=10**15),),
    templates=(
        TemplateSpec(name="t", url="http://127.0.0.1/t.qcow2", size_bytes=10**8, os_type="linux"),
    ),
    networks=tuple(
        NetworkSpec(name=f"n{n}", account="bench", cidr=f"10.{100 + n}.0.0/16")
        for n in range(NETWORKS)
    ),
)


class Fabric:
    """The fabric's commands (ids drawn up front: both sides run the same
    ones) and the VMs' commands on it."""

    def __init__(self) -> None:
        commands, made = plan(SPEC)
        self._setup = commands
        self.zone, self.pool, self.template = made.zone, made.pool, made.template
        self.hosts, self.networks = made.hosts, made.networks

    def setup_commands(self) -> list[Command]:
        return list(self._setup)

    def vm_commands(self, n: int) -> list[Command]:
        vm = uuid.uuid4()
        host = self.hosts[n % HOSTS]
        return [
            CreateVm(
                id=vm,
                account="bench",
                name=f"vm{n}",
                zone_id=self.zone,
                template_id=self.template,
                spec=VmSpec(cpus=1, ram_mb=512, root_disk_gb=10),
                network_ids=(self.networks[n % NETWORKS],),
            ),
            ReserveHostCapacity(host_id=host, vm_id=vm, cpus=1, ram_mb=512),
            AllocateIp(network_id=self.networks[n % NETWORKS], owner_id=vm),
            PlaceVm(vm_id=vm, host_id=host, pool_id=self.pool),
            RequestVmStart(vm_id=vm, host_id=host),
        ]


class ApplicationUnitOfWork:
    """Handlers on top of the library's repository; each command is one save."""

    def __init__(self, app: _StoreApplication) -> None:
        self.app = app
        self.touched: dict[UUID, Aggregate] = {}

    def get(self, cls: type[A], aggregate_id: UUID) -> A:
        found = self.find(cls, aggregate_id)
        if found is None:
            raise NotFound(f"{cls.entity} {aggregate_id} not found")
        return found

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        if aggregate_id in self.touched:
            aggregate: Any = self.touched[aggregate_id]
        else:
            try:
                aggregate = self.app.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return None
        if not isinstance(aggregate, cls):
            return None
        self.touched[aggregate_id] = aggregate
        return aggregate

    def add(self, aggregate: Aggregate) -> None:
        self.touched[aggregate.id] = aggregate

    def known_absent(self, ids: Iterable[UUID]) -> None:
        pass  # the library's repository asks the store either way

    def changed(self) -> list[Aggregate]:
        return [a for a in self.touched.values() if a.pending_events]


def run_baseline(target: DatabaseTarget, fabric: Fabric, vms: int) -> tuple[float, int]:
    env = store_environment(target, pool_size=4)
    env.update(
        AGGREGATE_CACHE_MAXSIZE="1000000",
        DEEPCOPY_FROM_AGGREGATE_CACHE="n",
        AGGREGATE_CACHE_FASTFORWARD="n",
    )
    app = _StoreApplication(env=env)

    def one(command: Command) -> None:
        uow = ApplicationUnitOfWork(app)
        dispatch(uow, command)
        app.save(*uow.touched.values())

    for command in fabric.setup_commands():
        one(command)
    workload = [c for n in range(vms) for c in fabric.vm_commands(n)]
    started = time.perf_counter()
    for command in workload:
        one(command)
    elapsed = time.perf_counter() - started
    app.close()
    return len(workload) / elapsed, len(workload)


def run_engine(target: DatabaseTarget, fabric: Fabric, vms: int, clients: int) -> tuple[float, int]:
    store = EventStore(target, pool_size=4)
    service = CommandService(store)
    for command in fabric.setup_commands():
        service.execute(command)
    per_client = [[fabric.vm_commands(n) for n in range(c, vms, clients)] for c in range(clients)]
    total = sum(len(units) * 5 for units in per_client)

    async def client(units: list[list[Command]]) -> None:
        for unit in units:
            for command in unit:
                await service.execute_async(command)

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(units) for units in per_client))
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    stats = dict(service.stats)
    service.close()
    store.close()
    average = stats["commands"] / max(stats["batches"], 1)
    print(f"engine: batches={stats['batches']} avg_batch={average:.1f}")
    return total / elapsed, total


def fresh_schema(server: DatabaseTarget, name: str) -> DatabaseTarget:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    return DatabaseTarget(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname=server.dbname,
        schema=name,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    url = os.environ.get("CLOUD_ENGINE_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="cloud-engine-bench-") as tmp:
        server = None
        if url:
            base = parse_database_url(url)
        else:
            server = EmbeddedPostgres(load_settings(environ={}, data_dir=tmp))
            base = server.target
        try:
            baseline, n_base = run_baseline(
                fresh_schema(base, "bench_baseline"), Fabric(), args.vms
            )
            print(f"baseline: {n_base} commands, Application.save per command, serial")
            ours, n_ours = run_engine(
                fresh_schema(base, "bench_engine"), Fabric(), args.vms, args.clients
            )
            print(f"engine: {n_ours} commands, command service, {args.clients} concurrent clients")
        finally:
            if server is not None:
                server.stop()
    print(f"commands_per_s={ours:.0f} baseline_per_s={baseline:.0f} ratio={ours / baseline:.2f}")


if __name__ == "__main__":
    main()
