"""An HA-enabled VM recorded Running whose domain is found off on an Up
host, on real PostgreSQL: automation's converger as it runs, on the drift
event the recorder wrote, the engine driven through its commands.

Convergence records it Stopped and starts it again in one command
(ConvergeVm with restart_if_ha), one transaction. It used to send two:
ConvergeVm, then a vm.start; an automation killed between them left the VM
Stopped for good, since the drift, delivered again, was judged at a version
the converge had moved the VM past. The start's id is derived from the VM
and the version it was judged at, so no way of asking again makes a second.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import pytest

from cloud_engine.automation.convergence import ACTOR, Converger
from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig
from cloud_engine.engine.commands.base import Command, CommandContext
from cloud_engine.engine.commands.compute import MarkVmRunning, RecordVmDrift
from cloud_engine.engine.commands.liveness import ConvergeVm, converge_restart_id
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.tables import read_model
from cloud_engine.projections import readmodel
from tests.fabric import FabricSpec, PoolSpec, TemplateSpec, build, hosts
from tests.integration.running_vms import deploy_running
from tests.integration.test_projections import _connect, apply_live

pytestmark = pytest.mark.postgres


class Killed(BaseException):
    """The automation's process dies (nothing catches it)."""


class KilledAfterOne:
    """The command service, seen by an automation that dies after its
    first command was recorded, before its next one is sent."""

    def __init__(self, service: CommandService) -> None:
        self.service = service
        self.sent: list[str] = []

    async def execute_async(self, command: Command, context: CommandContext) -> Any:
        if self.sent:
            raise Killed(type(command).__name__)
        result = await self.service.execute_async(command, context)
        self.sent.append(type(command).__name__)
        return result


@dataclass
class Cloud:
    service: CommandService
    store: EventStore
    target: DatabaseTarget
    conn: asyncpg.Connection
    host: uuid.UUID
    ha_vm: uuid.UUID
    plain_vm: uuid.UUID

    def vm(self, vm_id: uuid.UUID) -> VirtualMachine:
        vm = self.store.load(vm_id)
        assert isinstance(vm, VirtualMachine)
        return vm

    def converger(self, service: Any = None) -> Converger:
        """Automation's converger (its consumer not run: events are handed
        to it as the consumer would)."""
        return Converger(
            service or self.service,
            self.store,
            ConsumerConfig(bootstrap="unused:9092", group_id="g", topics=[]),
        )

    async def drift(self, vm_id: uuid.UUID, observed: str = "shutoff") -> CloudEvent:
        """The reconciler's report recorded, and its event as delivered."""
        await self.service.execute_async(
            RecordVmDrift(vm_id=vm_id, observed=observed, expected="Running")
        )
        vm = self.vm(vm_id)
        return CloudEvent(
            id=f"{vm_id}:{vm.version}",
            source="/test",
            type="io.cloudengine.vm.drift_observed.v1",
            subject=str(vm_id),
            time="2026-01-01T00:00:00Z",
            position=vm.version,
            aggregate_version=vm.version,
            data=msgspec.json.encode({"observed": observed, "expected": "Running"}),
        )

    async def starts_of(self, vm_id: uuid.UUID) -> list[uuid.UUID]:
        """The vm.start operations of the VM, by the read model."""
        await apply_live(self.conn, self.target.schema, page=500)
        rows = await self.conn.fetch(
            f"SELECT id FROM {read_model(self.target.schema, 'operation')}"
            f" WHERE {readmodel.key_sql('kind')} = 'vm.start'"
            f" AND {readmodel.key_sql('resource_id')} = $1",
            readmodel.key_value("resource_id", vm_id),
        )
        return [r["id"] for r in rows]


@pytest.fixture
async def cloud(
    pg_target: DatabaseTarget, service: CommandService, store: EventStore
) -> AsyncIterator[Cloud]:
    """Two Up hosts; an HA-enabled and a plain VM, each Running on the first."""
    spec = FabricSpec(hosts=hosts(2), pools=(PoolSpec(),), templates=(TemplateSpec(),))
    fabric = build(service, spec)
    host = fabric.hosts[0]
    conn = await _connect(pg_target)
    await readmodel.prepare(conn, pg_target.schema)
    try:
        vms: list[uuid.UUID] = []
        for name, ha in (("web", True), ("batch", False)):
            vm_id = await deploy_running(service, fabric, host, name, ha=ha)
            vms.append(vm_id)
        cloud = Cloud(service, store, pg_target, conn, host, vms[0], vms[1])
        for vm_id in vms:
            vm = cloud.vm(vm_id)
            assert (vm.state, vm.host_id) == ("Running", host)
        yield cloud
    finally:
        await conn.close()


async def test_an_ha_vm_found_off_is_recorded_stopped_and_started_in_one_command(cloud: Cloud):
    ha_event, plain_event = [await cloud.drift(v) for v in (cloud.ha_vm, cloud.plain_vm)]
    converger = cloud.converger()
    await converger.handle(ha_event, None)
    await converger.handle(plain_event, None)
    # One command a VM: the converge, and for the HA-enabled one its start.
    assert converger.decisions == 2

    ha_vm = cloud.vm(cloud.ha_vm)
    assert ha_vm.state == "Stopped"
    assert "found shutoff" in (ha_vm.converged_reason or ""), ha_vm.converged_reason
    assert "restarted (HA)" in (ha_vm.converged_reason or ""), ha_vm.converged_reason
    assert cloud.ha_vm not in cloud.store.load(cloud.host).reservations
    start = converge_restart_id(cloud.ha_vm, ha_event.aggregate_version)
    assert await cloud.starts_of(cloud.ha_vm) == [start]
    op = cloud.store.load(start)
    assert isinstance(op, Operation)
    assert (op.kind, op.status, op.resource_id) == ("vm.start", "pending", cloud.ha_vm)

    plain_vm = cloud.vm(cloud.plain_vm)
    assert plain_vm.state == "Stopped"
    assert "not HA-enabled" in (plain_vm.converged_reason or ""), plain_vm.converged_reason
    assert await cloud.starts_of(cloud.plain_vm) == []


async def test_a_kill_after_the_first_command_no_longer_leaves_the_ha_vm_stopped(cloud: Cloud):
    event = await cloud.drift(cloud.ha_vm)
    dying = KilledAfterOne(cloud.service)
    # The two-command flow died here, before its vm.start was sent.
    with contextlib.suppress(Killed):
        await cloud.converger(dying).handle(event, None)
    assert dying.sent == ["ConvergeVm"]
    assert cloud.vm(cloud.ha_vm).state == "Stopped"

    # The automation comes back; the drift is delivered again, but the VM
    # has moved past the version it was judged at: nothing is sent.
    resumed = cloud.converger()
    await resumed.handle(event, None)
    assert resumed.decisions == 0
    # The VM has its start all the same: recorded with the converge.
    start = converge_restart_id(cloud.ha_vm, event.aggregate_version)
    assert await cloud.starts_of(cloud.ha_vm) == [start]


async def test_asked_again_the_converge_makes_no_second_start(cloud: Cloud):
    event = await cloud.drift(cloud.ha_vm)
    judged = event.aggregate_version
    await cloud.converger().handle(event, None)
    start = converge_restart_id(cloud.ha_vm, judged)
    assert await cloud.starts_of(cloud.ha_vm) == [start]
    versions = [cloud.vm(cloud.ha_vm).version]

    key = f"converge/{cloud.ha_vm}/{judged}"
    command = ConvergeVm(
        vm_id=cloud.ha_vm,
        to="Stopped",
        reason=cloud.vm(cloud.ha_vm).converged_reason or "",
        expected_version=judged,
        restart_if_ha=True,
    )

    def context(key: str) -> CommandContext:
        return CommandContext(actor=ACTOR, request_id=key, idempotency_key=key)

    # The same key: the first answer again, nothing recorded.
    again = await cloud.service.execute_async(command, context(key))
    assert (again.aggregate_id, again.value) == (cloud.ha_vm, str(start))
    # A fresh key (a resumed automation that judged at that version), with
    # or without the version: refused (moved on; held by its start).
    for sent in (command, msgspec.structs.replace(command, expected_version=None)):
        with pytest.raises(Conflict):
            await cloud.service.execute_async(sent, context(f"{key}/again-{uuid.uuid4()}"))
    # The second half of the old flow, from an automation of before: refused.
    with pytest.raises(Conflict):
        await cloud.service.execute_async(
            VmOperation(kind="vm.start", vm_id=cloud.ha_vm), context(f"{key}/start")
        )
    # The drift delivered again to another converger: nothing sent.
    other = cloud.converger()
    await other.handle(event, None)
    assert other.decisions == 0
    versions.append(cloud.vm(cloud.ha_vm).version)
    assert await cloud.starts_of(cloud.ha_vm) == [start]

    # The start runs; the same judgement sent again is still refused.
    await cloud.service.execute_async(PlaceOperation(operation_id=start, host_id=cloud.host))
    await cloud.service.execute_async(MarkVmRunning(vm_id=cloud.ha_vm))
    await cloud.service.execute_async(AdvanceOperation(operation_id=start))
    vm = cloud.vm(cloud.ha_vm)
    assert (vm.state, vm.host_id) == ("Running", cloud.host)
    assert versions[0] == versions[1] < vm.version
    with pytest.raises(Conflict):
        await cloud.service.execute_async(command, context(f"{key}/late-{uuid.uuid4()}"))
    assert await cloud.starts_of(cloud.ha_vm) == [start]
    assert cloud.vm(cloud.ha_vm).state == "Running"


async def test_found_off_again_later_it_is_started_again_under_a_new_id(cloud: Cloud):
    first = await cloud.drift(cloud.ha_vm)
    await cloud.converger().handle(first, None)
    start = converge_restart_id(cloud.ha_vm, first.aggregate_version)
    await cloud.service.execute_async(PlaceOperation(operation_id=start, host_id=cloud.host))
    await cloud.service.execute_async(MarkVmRunning(vm_id=cloud.ha_vm))
    await cloud.service.execute_async(AdvanceOperation(operation_id=start))

    second = await cloud.drift(cloud.ha_vm, observed="crashed")
    await cloud.converger().handle(second, None)
    restart = converge_restart_id(cloud.ha_vm, second.aggregate_version)
    assert restart != start
    assert sorted(await cloud.starts_of(cloud.ha_vm)) == sorted([start, restart])
    assert cloud.vm(cloud.ha_vm).state == "Stopped"


async def test_a_restart_is_only_asked_with_a_converge_to_stopped(cloud: Cloud):
    with pytest.raises(Validation):
        await cloud.service.execute_async(
            ConvergeVm(
                vm_id=cloud.ha_vm,
                to="Running",
                reason="its domain runs",
                host_id=cloud.host,
                restart_if_ha=True,
            )
        )
    # A non-HA VM asked to restart if HA-enabled: recorded Stopped, no start.
    result = await cloud.service.execute_async(
        ConvergeVm(
            vm_id=cloud.plain_vm,
            to="Stopped",
            reason="its domain was found absent",
            restart_if_ha=True,
        )
    )
    assert (result.aggregate_id, result.value) == (cloud.plain_vm, None)
    assert cloud.vm(cloud.plain_vm).state == "Stopped"
    assert await cloud.starts_of(cloud.plain_vm) == []
