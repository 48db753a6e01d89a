"""Commands of a host's maintenance as an operation (host.maintenance,
engine/operations/host_maintenance.py): an admin starts the drain
(HostOperation) or cancels it (CancelHostMaintenance); the drainer
(automation/drain.py) reports what it finds (ReportHostDrain).
ExitHostMaintenance (engine/commands/hosts.py) makes the host placeable
again afterwards."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.operations import VmOperation, vm_operation
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import DRAINING, Host
from cloud_engine.engine.lookups import load_ref, require_new_id
from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.host_maintenance import (
    CANCELLED,
    HostMaintenance,
    migration_id,
)
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.registry import kind_of
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine

# The account fabric operations are recorded under (a host is no tenant's).
FABRIC_ACCOUNT = "system"
# The kinds clients start on a host (engine/operations/registry.py).
HostOperationKind = Literal["host.maintenance"]
Blocker = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class HostOperation(Command, frozen=True, kw_only=True):
    kind: HostOperationKind
    host_id: UUID
    operation_id: UUID | None = None


class ReportHostDrain(Command, frozen=True, kw_only=True):
    operation_id: UUID
    remaining: Annotated[int, msgspec.Meta(ge=0)]  # VMs still on the host
    # One line per VM that cannot move: "vm <id>: <why>".
    blocked: Annotated[tuple[Blocker, ...], msgspec.Meta(max_length=1000)] = ()


class MigrateOffHost(Command, frozen=True, kw_only=True):
    """A drain's vm.migrate of one VM of its host (id derived from both):
    refused once the drain has ended, in the same transaction, so a
    cancelled drain starts no migration afterwards."""

    operation_id: UUID
    vm_id: UUID


class CancelHostMaintenance(Command, frozen=True, kw_only=True):
    host_id: UUID


@handles(HostOperation)
def host_operation(uow: UnitOfWork, cmd: HostOperation) -> Outcome:
    host = load_ref(uow, Host, cmd.host_id, "host_id")
    kind = kind_of(cmd.kind)
    op_id = cmd.operation_id
    if op_id is None:
        op_id = uuid4()
        uow.known_absent((op_id,))
    require_new_id(uow, op_id)
    request = Request()
    op = Operation.create(
        kind=kind.name,
        resource_type=kind.resource_type,
        resource_id=host.id,
        account=FABRIC_ACCOUNT,
        steps=kind.steps,
        params=kind.prepare(uow, host, request),
        id=op_id,
    )
    uow.add(op)
    guard.acquire(uow, host.id, op.id, kind.name)
    kind.begin(uow, op, host, request)
    return Outcome(aggregate_id=op.id, value=str(host.id))


@handles(ReportHostDrain)
def report_host_drain(uow: UnitOfWork, cmd: ReportHostDrain) -> Outcome:
    op, kind = _drain(uow, cmd.operation_id)
    kind.report(uow, op, cmd.remaining, cmd.blocked)
    return Outcome(aggregate_id=op.id, value=op.status)


@handles(MigrateOffHost)
def migrate_off_host(uow: UnitOfWork, cmd: MigrateOffHost) -> Outcome:
    drain = uow.get(Operation, cmd.operation_id)
    if not isinstance(kind_of(drain.kind), HostMaintenance):
        raise Validation(
            f"operation {drain.id} is a {drain.kind}, not a drain", field="operation_id"
        )
    if drain.finished or drain.current_step != "migrate":
        raise Conflict(f"drain {drain.id} is {drain.status}", field="operation_id")
    uow.get(Host, drain.resource_id).require_state(DRAINING, "drain")
    vm = load_ref(uow, VirtualMachine, cmd.vm_id, "vm_id")
    if drain.resource_id not in (vm.host_id, vm.last_host_id):
        raise Conflict(f"vm {vm.id} is not on host {drain.resource_id}", field="vm_id")
    return vm_operation(
        uow,
        VmOperation(kind="vm.migrate", vm_id=vm.id, operation_id=migration_id(drain.id, vm.id)),
    )


@handles(CancelHostMaintenance)
def cancel_host_maintenance(uow: UnitOfWork, cmd: CancelHostMaintenance) -> Outcome:
    host = load_ref(uow, Host, cmd.host_id, "host_id")
    host.cancel_maintenance()
    held = uow.find(guard.ResourceGuard, guard.guard_id(host.id))
    if held is not None and held.operation_id is not None:
        op = uow.get(Operation, held.operation_id)
        kind_of(op.kind).fail(uow, op, CANCELLED, timed_out=False)
    return Outcome(aggregate_id=host.id)


def _drain(uow: UnitOfWork, op_id: UUID) -> tuple[Operation, HostMaintenance]:
    op = uow.get(Operation, op_id)
    kind = kind_of(op.kind)
    if not isinstance(kind, HostMaintenance):
        raise Validation(f"operation {op.id} is a {op.kind}, not a drain", field="operation_id")
    return op, kind
