"""Commands of an HA run as an operation (host.ha, engine/operations/
host_ha.py), sent by automation (automation/ha.py): the run begins once
the host is fenced (BeginHaRun), restarts each HA-enabled VM under an id
of its own (RestartOnHa) and reports where it stands (ReportHaRun). A VM
recorded Running on the host after the run listed its VMs is recorded
Stopped and, if HA-enabled, started again in one step (RecoverLateOnHa)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

import msgspec

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.liveness import ConvergeVm, converge
from cloud_engine.engine.commands.maintenance import start_fabric_operation
from cloud_engine.engine.commands.operations import VmOperation, vm_operation
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.lookups import load_ref
from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.host_ha import HostHa, late_restart_id, restart_id
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.registry import kind_of
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine

Finding = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class BeginHaRun(Command, frozen=True, kw_only=True):
    host_id: UUID
    operation_id: UUID
    # The HA-enabled VMs to restart, highest priority first.
    vm_ids: Annotated[tuple[UUID, ...], msgspec.Meta(max_length=10_000)] = ()


class RestartOnHa(Command, frozen=True, kw_only=True):
    """The run's vm.start of one of its VMs (id derived from both)."""

    operation_id: UUID
    vm_id: UUID


class RecoverLateOnHa(Command, frozen=True, kw_only=True):
    """A VM recorded Running on the run's host (Down and fenced) that the
    run does not restart itself: recorded Stopped with the reason, its
    capacity there given back, and, if HA-enabled, started again through
    a vm.start whose id is derived from the run, the VM and its version
    (late_restart_id), all in one transaction: sent as two commands, an
    automation killed between them would leave the VM Stopped, with
    nothing Running there for its next pass to find. expected_version: as
    ConvergeVm's (refused if the VM moved on since it was found)."""

    operation_id: UUID
    vm_id: UUID
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    expected_version: int | None = None


class ReportHaRun(Command, frozen=True, kw_only=True):
    operation_id: UUID
    stage: Literal["recorded", "restarting"]
    remaining: Annotated[int, msgspec.Meta(ge=0)] = 0  # restarts not yet ended
    # One line per VM that could not be restarted: "vm <id>: <why>".
    failed: Annotated[tuple[Finding, ...], msgspec.Meta(max_length=10_000)] = ()


@handles(BeginHaRun)
def begin_ha_run(uow: UnitOfWork, cmd: BeginHaRun) -> Outcome:
    host = load_ref(uow, Host, cmd.host_id, "host_id")
    held = uow.find(guard.ResourceGuard, guard.guard_id(host.id))
    if held is not None and held.operation_id is not None and held.operation_id != cmd.operation_id:
        # A drain of a host that died cannot go on: its VMs are HA's now.
        drain = uow.get(Operation, held.operation_id)
        kind_of(drain.kind).fail(
            uow, drain, f"host {host.name} went down: HA took over", timed_out=False
        )
    kind = kind_of(HostHa.name)
    return start_fabric_operation(uow, kind, host, cmd.operation_id, Request(vm_ids=cmd.vm_ids))


@handles(RestartOnHa)
def restart_on_ha(uow: UnitOfWork, cmd: RestartOnHa) -> Outcome:
    run = _run(uow, cmd.operation_id)
    if run.finished or run.current_step != "restart":
        raise Conflict(f"HA run {run.id} is {run.status}, at {run.current_step}")
    if cmd.vm_id not in run.params.vm_ids:
        raise Validation(f"vm {cmd.vm_id} is not one HA run {run.id} restarts", field="vm_id")
    start = restart_id(run.id, cmd.vm_id)
    if uow.find(Operation, start) is not None:
        return Outcome(aggregate_id=start, value=str(cmd.vm_id))
    return vm_operation(uow, VmOperation(kind="vm.start", vm_id=cmd.vm_id, operation_id=start))


@handles(RecoverLateOnHa)
def recover_late_on_ha(uow: UnitOfWork, cmd: RecoverLateOnHa) -> Outcome:
    """Outcome: the VM, and its vm.start's id as the value (None: not HA-enabled)."""
    run = _run(uow, cmd.operation_id)
    host = uow.get(Host, run.resource_id)
    if host.liveness != "Down" or not host.fenced:
        # Only the fence says nothing runs there any more.
        raise Conflict(f"host {host.name} is {host.liveness}, fenced: {host.fenced}", owner=host.id)
    if not run.finished and cmd.vm_id in run.params.vm_ids:
        raise Validation(
            f"vm {cmd.vm_id} is one HA run {run.id} restarts itself (RestartOnHa)", field="vm_id"
        )
    vm = load_ref(uow, VirtualMachine, cmd.vm_id, "vm_id")
    if vm.state != "Running" or vm.host_id != host.id:
        raise Conflict(
            f"vm {vm.id} is {vm.state} on host {vm.host_id}, not Running on host {host.id}",
            owner=vm.id,
        )
    # The version it was found Running at names the start (derived before
    # the converge moves it on), so asking again never makes a second.
    return converge(
        uow,
        ConvergeVm(
            vm_id=vm.id, to="Stopped", reason=cmd.reason, expected_version=cmd.expected_version
        ),
        lambda found: late_restart_id(run.id, found.id, found.version),
    )


@handles(ReportHaRun)
def report_ha_run(uow: UnitOfWork, cmd: ReportHaRun) -> Outcome:
    run = _run(uow, cmd.operation_id)
    kind = kind_of(run.kind)
    assert isinstance(kind, HostHa)
    kind.report(uow, run, cmd.stage, cmd.remaining, cmd.failed)
    return Outcome(aggregate_id=run.id, value=run.status)


def _run(uow: UnitOfWork, op_id: UUID) -> Operation:
    run = load_ref(uow, Operation, op_id, "operation_id")
    if run.kind != HostHa.name:
        raise Validation(f"operation {run.id} is a {run.kind}, not an HA run", field="operation_id")
    return run
