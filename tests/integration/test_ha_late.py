"""A VM recorded Running on a Down, fenced host after its HA run ended, on
real PostgreSQL: the engine driven through its commands (the effector's
answers and the operation manager's steps sent by hand), automation's
HA runner and liveness monitor as they run, on read models applied from
the log, heartbeats read from the shared pool's directory.

The way there: a live migration off the host is in flight (the VM is
Migrating, so the run does not list it) when the host dies; the run
begins and ends; then the migration's failure is answered (not a
timeout) and puts the VM back on its source, the fenced host. The fence
powered it off: it is recorded Stopped with the reason, its capacity
there given back, an HA-enabled one started again once, and the host is
not declared up while it is still recorded Running there.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from cloud_engine.automation.fencing import FenceTarget
from cloud_engine.automation.ha import HaRunner
from cloud_engine.automation.heartbeat import HEARTBEAT_DIR, PoolHeartbeats
from cloud_engine.automation.liveness import LivenessMonitor
from cloud_engine.automation.reads import Reads
from cloud_engine.engine.commands.base import Command
from cloud_engine.engine.commands.compute import FailVmMigration, MarkVmRunning
from cloud_engine.engine.commands.liveness import (
    ConfirmHostDown,
    RecordHostAnswered,
    RecordHostFenced,
    SuspectHost,
)
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.host_ha import run_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from cloud_engine.infra.tables import read_model
from cloud_engine.projections import readmodel
from tests.fabric import FabricSpec, PoolSpec, TemplateSpec, build, hosts
from tests.integration.running_vms import deploy_running
from tests.integration.test_projections import _connect, apply_live

pytestmark = pytest.mark.postgres


class RecordingFencer:
    """The Fencer seam: the host is off once asked (a lab host's power cut)."""

    name = "test-power"

    def __init__(self) -> None:
        self.fenced: list[uuid.UUID] = []

    async def fence(self, host: FenceTarget) -> None:
        self.fenced.append(host.host_id)


@dataclass
class Cloud:
    service: CommandService
    store: EventStore
    target: DatabaseTarget
    conn: asyncpg.Connection
    reads: Reads
    dead: uuid.UUID  # the host that dies
    alive: uuid.UUID
    shared: Path  # the shared pool's directory (heartbeats)
    ha_vm: uuid.UUID
    plain_vm: uuid.UUID
    migrations: tuple[uuid.UUID, ...]

    async def do(self, command: Command) -> uuid.UUID:
        return (await self.service.execute_async(command)).aggregate_id

    async def project(self) -> None:
        """The read models up to the log's end (the projection worker's job)."""
        await apply_live(self.conn, self.target.schema, page=500)

    def vm(self, vm_id: uuid.UUID) -> VirtualMachine:
        vm = self.store.load(vm_id)
        assert isinstance(vm, VirtualMachine)
        return vm

    def host(self, host_id: uuid.UUID) -> Host:
        host = self.store.load(host_id)
        assert isinstance(host, Host)
        return host

    def ha_run(self) -> Operation:
        fenced_at = self.host(self.dead).fenced_at
        assert fenced_at is not None
        run = self.store.load(run_id(self.dead, fenced_at.isoformat()))
        assert isinstance(run, Operation)
        return run

    async def starts_of(self, vm_id: uuid.UUID) -> list[uuid.UUID]:
        """The vm.start operations of the VM, by the read model."""
        await self.project()
        rows = await self.conn.fetch(
            f"SELECT id FROM {read_model(self.target.schema, 'operation')}"
            f" WHERE {readmodel.key_sql('kind')} = 'vm.start'"
            f" AND {readmodel.key_sql('resource_id')} = $1",
            readmodel.key_value("resource_id", vm_id),
        )
        return [r["id"] for r in rows]

    async def answer_migrations_failed(self) -> None:
        """The effector's answer to each migration: failed (not a timeout)."""
        for vm_id in (self.ha_vm, self.plain_vm):
            await self.do(FailVmMigration(vm_id=vm_id, reason="migration failed: connection reset"))

    async def settle_migrations(self) -> None:
        """What the operation manager does on that answer."""
        for op_id in self.migrations:
            await self.do(AdvanceOperation(operation_id=op_id))
            op = self.store.load(op_id)
            assert isinstance(op, Operation) and op.status == "failed", op


def liveness(cloud: Cloud, fencer: RecordingFencer) -> LivenessMonitor:
    """Automation's liveness monitor as it runs, declaring a fenced host Up
    as soon as it answers with a fresh heartbeat (up_after_s=0)."""
    return LivenessMonitor(
        cloud.service,
        cloud.store,
        cloud.reads,
        PoolHeartbeats(),
        fencer,
        HaRunner(cloud.service, cloud.store, cloud.reads),
        heartbeat_timeout_s=4.0,
        up_after_s=0.0,
    )


@pytest.fixture
async def cloud(
    pg_target: DatabaseTarget, service: CommandService, store: EventStore, tmp_path: Path
) -> AsyncIterator[Cloud]:
    """Two hosts on a shared pool; an HA-enabled and a plain VM, each Running
    on the first host and live-migrating to the second."""
    shared = tmp_path / "shared"
    (shared / HEARTBEAT_DIR).mkdir(parents=True)
    spec = FabricSpec(
        hosts=hosts(2),
        pools=(PoolSpec(url=str(shared)),),
        templates=(TemplateSpec(),),
    )
    fabric = build(service, spec)
    dead, alive = fabric.hosts
    conn = await _connect(pg_target)
    await readmodel.prepare(conn, pg_target.schema)
    pool = await create_pool(pg_target, max_size=2)
    try:
        vms: list[uuid.UUID] = []
        migrations: list[uuid.UUID] = []
        for name, ha in (("web", True), ("batch", False)):
            vm_id = await deploy_running(service, fabric, dead, name, ha=ha)
            migrate = await service.execute_async(
                VmOperation(kind="vm.migrate", vm_id=vm_id, host_id=alive)
            )
            await service.execute_async(
                PlaceOperation(operation_id=migrate.aggregate_id, host_id=alive)
            )
            vms.append(vm_id)
            migrations.append(migrate.aggregate_id)
        cloud = Cloud(
            service,
            store,
            pg_target,
            conn,
            Reads(pool, pg_target.schema),
            dead,
            alive,
            shared,
            vms[0],
            vms[1],
            tuple(migrations),
        )
        for vm_id in vms:
            vm = cloud.vm(vm_id)
            assert (vm.state, vm.host_id, vm.migration_target_id) == ("Migrating", dead, alive)
        yield cloud
    finally:
        await pool.close()
        await conn.close()


async def test_a_vm_back_on_the_fenced_host_after_its_ha_run_is_stopped_and_restarted_once(
    cloud: Cloud,
):
    for command in (
        SuspectHost(host_id=cloud.dead, reason="libvirt unreachable"),
        ConfirmHostDown(host_id=cloud.dead, reason="no heartbeat"),
        RecordHostFenced(host_id=cloud.dead, fencer="test-power"),
    ):
        await cloud.do(command)
    await cloud.project()
    runner = HaRunner(cloud.service, cloud.store, cloud.reads)
    assert await runner.run(cloud.host(cloud.dead))
    run = cloud.ha_run()
    # The migrating VMs were not the run's: it ended with nothing to restart.
    assert (run.status, run.params.vm_ids) == ("succeeded", ())

    await cloud.answer_migrations_failed()
    await cloud.settle_migrations()
    for vm_id in (cloud.ha_vm, cloud.plain_vm):
        vm = cloud.vm(vm_id)
        assert (vm.state, vm.host_id) == ("Running", cloud.dead)
        assert vm_id in cloud.host(cloud.dead).reservations
        assert vm_id not in cloud.host(cloud.alive).reservations

    await cloud.project()
    dead = cloud.host(cloud.dead)
    assert await runner.run(dead)
    for vm_id in (cloud.ha_vm, cloud.plain_vm):
        vm = cloud.vm(vm_id)
        assert (vm.state, vm.last_host_id) == ("Stopped", cloud.dead), vm
        assert "fenced" in (vm.converged_reason or ""), vm.converged_reason
        assert "after its HA run began" in (vm.converged_reason or ""), vm.converged_reason
        assert vm_id not in cloud.host(cloud.dead).reservations
    # The HA-enabled VM gets one vm.start; the plain one none.
    (start,) = await cloud.starts_of(cloud.ha_vm)
    assert await cloud.starts_of(cloud.plain_vm) == []
    assert runner.started == [start]
    versions = [cloud.vm(v).version for v in (cloud.ha_vm, cloud.plain_vm)]

    # Another pass, and a resumed automation's first: nothing asked again.
    assert await runner.run(dead)
    assert await HaRunner(cloud.service, cloud.store, cloud.reads).run(dead)
    assert await cloud.starts_of(cloud.ha_vm) == [start]
    assert [cloud.vm(v).version for v in (cloud.ha_vm, cloud.plain_vm)] == versions

    # The start is placed (on the live host: a Down one takes nothing) and
    # runs; the fenced host holds nothing of either VM.
    await cloud.do(PlaceOperation(operation_id=start, host_id=cloud.alive))
    await cloud.do(MarkVmRunning(vm_id=cloud.ha_vm))
    await cloud.do(AdvanceOperation(operation_id=start))
    vm = cloud.vm(cloud.ha_vm)
    assert (vm.state, vm.host_id) == ("Running", cloud.alive)
    await cloud.project()
    assert await HaRunner(cloud.service, cloud.store, cloud.reads).run(cloud.host(cloud.dead))
    assert await cloud.starts_of(cloud.ha_vm) == [start]
    assert dict(cloud.host(cloud.dead).reservations) == {}


async def test_the_fenced_host_is_not_declared_up_while_a_vm_is_recorded_running_there(
    cloud: Cloud,
):
    fencer = RecordingFencer()
    monitor = liveness(cloud, fencer)
    # Suspect (the recorder), then no heartbeat: Down, fenced, its run ended.
    await cloud.do(SuspectHost(host_id=cloud.dead, reason="libvirt unreachable"))
    await cloud.project()
    await monitor.check_once()
    dead = cloud.host(cloud.dead)
    assert (dead.liveness, dead.fenced, fencer.fenced) == ("Down", True, [cloud.dead])
    assert cloud.ha_run().status == "succeeded"

    # The migrations' failure is recorded (back on the fenced source) before
    # the operation manager settled them, which still hold the VMs; the host
    # answers again, its heartbeat fresh.
    await cloud.answer_migrations_failed()
    (cloud.shared / HEARTBEAT_DIR / dead.name).touch()
    await cloud.do(RecordHostAnswered(host_id=cloud.dead))
    await cloud.project()
    await monitor.check_once()
    assert cloud.host(cloud.dead).liveness == "Down"
    for vm_id in (cloud.ha_vm, cloud.plain_vm):
        assert cloud.vm(vm_id).state == "Running"

    # Settled: recorded Stopped in the next round, then the host is Up.
    await cloud.settle_migrations()
    (cloud.shared / HEARTBEAT_DIR / dead.name).touch()
    await cloud.project()
    await monitor.check_once()
    for vm_id in (cloud.ha_vm, cloud.plain_vm):
        assert cloud.vm(vm_id).state == "Stopped"
    assert len(await cloud.starts_of(cloud.ha_vm)) == 1
    dead = cloud.host(cloud.dead)
    assert (dead.liveness, dict(dead.reservations)) == ("Up", {})


async def test_the_pass_that_ends_the_run_does_not_declare_up_a_host_with_a_held_vm(
    cloud: Cloud,
):
    # Both migrations failed back onto the host before it died: the VMs are
    # Running there, still held by their vm.migrate operations. The run
    # lists the HA VM, cannot record either Stopped (held) nor restart the
    # HA one (held): it fails, so it has ended in the very pass it began.
    await cloud.answer_migrations_failed()
    fencer = RecordingFencer()
    monitor = liveness(cloud, fencer)
    await cloud.do(SuspectHost(host_id=cloud.dead, reason="libvirt unreachable"))
    await cloud.do(ConfirmHostDown(host_id=cloud.dead, reason="no heartbeat"))
    await cloud.do(RecordHostFenced(host_id=cloud.dead, fencer="test-power"))
    dead = cloud.host(cloud.dead)
    (cloud.shared / HEARTBEAT_DIR / dead.name).touch()
    await cloud.do(RecordHostAnswered(host_id=cloud.dead))
    await cloud.project()
    await monitor.check_once()
    run = cloud.ha_run()
    assert run.finished and run.params.vm_ids == (cloud.ha_vm,), run
    for vm_id in (cloud.ha_vm, cloud.plain_vm):
        assert (cloud.vm(vm_id).state, cloud.vm(vm_id).host_id) == ("Running", cloud.dead)
    assert cloud.host(cloud.dead).liveness == "Down"

    # Once the operations let go, a pass records them Stopped (the run has
    # ended: as late VMs), and only then is the host Up.
    await cloud.settle_migrations()
    (cloud.shared / HEARTBEAT_DIR / dead.name).touch()
    await cloud.project()
    await monitor.check_once()
    for vm_id in (cloud.ha_vm, cloud.plain_vm):
        assert cloud.vm(vm_id).state == "Stopped"
    assert len(await cloud.starts_of(cloud.ha_vm)) == 1
    assert cloud.host(cloud.dead).liveness == "Up"


async def test_vms_the_read_models_do_not_show_yet_are_found_by_the_hosts_reservations(
    cloud: Cloud,
):
    # The VMs are back on the host (their migrations failed and settled)
    # when it dies, but the read models have not caught up with any of it:
    # the host's reservations, in the log, still name them.
    await cloud.answer_migrations_failed()
    await cloud.settle_migrations()
    for command in (
        SuspectHost(host_id=cloud.dead, reason="libvirt unreachable"),
        ConfirmHostDown(host_id=cloud.dead, reason="no heartbeat"),
        RecordHostFenced(host_id=cloud.dead, fencer="test-power"),
    ):
        await cloud.do(command)
    assert await cloud.reads.vm_ids("host_id", cloud.dead) == []  # nothing projected
    runner = HaRunner(cloud.service, cloud.store, cloud.reads)
    while not await runner.run(cloud.host(cloud.dead)):
        # Its restart ends (as the operation manager would, once placed).
        (start,) = runner.started
        await cloud.do(PlaceOperation(operation_id=start, host_id=cloud.alive))
        await cloud.do(MarkVmRunning(vm_id=cloud.ha_vm))
        await cloud.do(AdvanceOperation(operation_id=start))
    assert cloud.ha_run().params.vm_ids == (cloud.ha_vm,)
    assert cloud.vm(cloud.plain_vm).state == "Stopped"
    assert (cloud.vm(cloud.ha_vm).state, cloud.vm(cloud.ha_vm).host_id) == ("Running", cloud.alive)
    assert dict(cloud.host(cloud.dead).reservations) == {}
