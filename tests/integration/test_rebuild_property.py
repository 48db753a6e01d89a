"""Property: after any workload, a rebuilt read model equals the live one.

Hypothesis draws the workload (capacity reserved and released on hosts, IPs
allocated and freed, VMs walked through their lifecycle, commands the domain
refuses included), the live applier's batch size, and a point where a
rebuild happens in the middle: the live applier then goes on from rows the
rebuild wrote without snapshots (refolded from the log), and a second
rebuild at the end must still agree. Real PostgreSQL; each example gets a
schema of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cloud_engine.engine.commands.compute import (
    CreateVm,
    MarkVmRunning,
    MarkVmStopped,
    PlaceVm,
    RebootVm,
    RequestVmStart,
    RequestVmStop,
)
from cloud_engine.engine.commands.hosts import ReleaseHostCapacity, ReserveHostCapacity
from cloud_engine.engine.commands.network import AllocateIp, ReleaseIp
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VmSpec
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Rebuild
from tests.integration.test_projection_worker import setup_fabric
from tests.integration.test_projections import _connect, apply_live, checksum

pytestmark = pytest.mark.postgres

ACTIONS = ("reserve", "release", "allocate", "free", "vm", "vm_step")
Step = tuple[str, int]


@contextmanager
def fresh_schema(server: DatabaseTarget) -> Iterator[DatabaseTarget]:
    schema = f"h_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield DatabaseTarget(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password,
            dbname=server.dbname,
            schema=schema,
        )
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


class Workload:
    """Drives the command service; `pick` chooses among what exists."""

    VM_STEPS = (
        lambda vm, host: RequestVmStart(vm_id=vm, host_id=host),
        lambda vm, host: MarkVmRunning(vm_id=vm),
        lambda vm, host: RebootVm(vm_id=vm),
        lambda vm, host: RequestVmStop(vm_id=vm),
        lambda vm, host: MarkVmStopped(vm_id=vm),
    )

    def __init__(self, service: CommandService) -> None:
        self.service = service
        self.fabric = setup_fabric(service)
        self.reservations: list[tuple[uuid.UUID, uuid.UUID]] = []
        self.ips: list[uuid.UUID] = []
        self.vms: list[tuple[uuid.UUID, uuid.UUID, int]] = []  # id, host, next step

    def run(self, action: str, pick: int) -> None:
        f = self.fabric
        try:
            if action == "reserve":
                host = f.hosts[pick % len(f.hosts)]
                vm = uuid.uuid4()
                self.service.execute(
                    ReserveHostCapacity(host_id=host, vm_id=vm, cpus=1 + pick % 4, ram_mb=512)
                )
                self.reservations.append((host, vm))
            elif action == "release" and self.reservations:
                host, vm = self.reservations.pop(pick % len(self.reservations))
                self.service.execute(ReleaseHostCapacity(host_id=host, vm_id=vm))
            elif action == "allocate":
                self.ips.append(self.service.execute(AllocateIp(network_id=f.network)).aggregate_id)
            elif action == "free" and self.ips:
                self.service.execute(ReleaseIp(ip_id=self.ips.pop(pick % len(self.ips))))
            elif action == "vm":
                host = f.hosts[pick % len(f.hosts)]
                vm = self.service.execute(
                    CreateVm(
                        account="acct",
                        name=f"vm{len(self.vms)}",
                        zone_id=f.zone,
                        template_id=uuid.uuid4(),
                        spec=VmSpec(cpus=1, ram_mb=256, root_disk_gb=1),
                    )
                ).aggregate_id
                self.service.execute(PlaceVm(vm_id=vm, host_id=host, pool_id=uuid.uuid4()))
                self.vms.append((vm, host, 0))
            elif action == "vm_step" and self.vms:
                i = pick % len(self.vms)
                vm, host, step = self.vms[i]
                # Sometimes a step out of order: the refusal must store nothing.
                command = self.VM_STEPS[(step + pick // 7) % len(self.VM_STEPS)](vm, host)
                self.vms[i] = (vm, host, step + 1)
                self.service.execute(command)
        except DomainError:
            pass  # refused: nothing stored, as designed


async def _prepare_and_apply(target: DatabaseTarget, page: int) -> dict[str, str]:
    conn = await _connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
        await apply_live(conn, target.schema, page=page)
        return await checksum(conn, target.schema)
    finally:
        await conn.close()


async def _rebuild(target: DatabaseTarget) -> dict[str, str]:
    await Rebuild(target, processes=1).run()
    conn = await _connect(target)
    try:
        return await checksum(conn, target.schema)
    finally:
        await conn.close()


steps = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 1000)), max_size=40)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=steps, second=steps, page=st.integers(1, 25))
def test_rebuild_equals_live_after_any_workload(
    pg_server: DatabaseTarget, first: list[Step], second: list[Step], page: int
) -> None:
    with fresh_schema(pg_server) as target:
        store = EventStore(target, pool_size=2)
        service = CommandService(store)
        try:
            workload = Workload(service)
            for action, pick in first:
                workload.run(action, pick)
            live = asyncio.run(_prepare_and_apply(target, page))
            assert asyncio.run(_rebuild(target)) == live

            # The live applier goes on from rebuilt rows (most without a snapshot).
            for action, pick in second:
                workload.run(action, pick)
            live = asyncio.run(_prepare_and_apply(target, page))
            assert asyncio.run(_rebuild(target)) == live
        finally:
            service.close()
            store.close()
