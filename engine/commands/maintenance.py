"""Commands of a host's maintenance as an operation (host.maintenance,
engine/operations/host_maintenance.py): an admin starts the drain
(HostOperation) or cancels it (CancelHostMaintenance); the drainer
(automation/drain.py) reports what it finds (ReportHostDrain).
ExitHostMaintenance (engine/commands/hosts.py) makes the host placeable
again afterwards."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.operations import (
    VmOperation,
    VolumeOperation,
    vm_operation,
    volume_operation,
)
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import DRAINING, Host
from cloud_engine.engine.fabric.storage_pool import DRAINING as POOL_DRAINING
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.lookups import load_ref, require_new_id
from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.host_maintenance import CANCELLED, DrainKind, migration_id
from cloud_engine.engine.operations.kind import OperationKind, Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.pool_maintenance import move_id
from cloud_engine.engine.operations.registry import kind_of
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume

# The account fabric operations are recorded under (a host is no tenant's).
FABRIC_ACCOUNT = "system"
# The kinds clients start on a host (engine/operations/registry.py).
HostOperationKind = Literal["host.maintenance"]
PoolOperationKind = Literal["storage_pool.maintenance"]
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


class PoolOperation(Command, frozen=True, kw_only=True):
    kind: PoolOperationKind
    pool_id: UUID
    operation_id: UUID | None = None


class ReportPoolDrain(Command, frozen=True, kw_only=True):
    operation_id: UUID
    remaining: Annotated[int, msgspec.Meta(ge=0)]  # volumes still in the pool
    # One line per volume that cannot move: "volume <id>: <why>".
    blocked: Annotated[tuple[Blocker, ...], msgspec.Meta(max_length=1000)] = ()


class MoveOffPool(Command, frozen=True, kw_only=True):
    """A pool drain's volume.migrate of one of its volumes to pool_id (id
    derived from both), refused once the drain has ended."""

    operation_id: UUID
    volume_id: UUID
    pool_id: UUID


class CancelStoragePoolMaintenance(Command, frozen=True, kw_only=True):
    pool_id: UUID


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
    return start_fabric_operation(uow, kind_of(cmd.kind), host, cmd.operation_id)


@handles(PoolOperation)
def pool_operation(uow: UnitOfWork, cmd: PoolOperation) -> Outcome:
    pool = load_ref(uow, StoragePool, cmd.pool_id, "pool_id")
    return start_fabric_operation(uow, kind_of(cmd.kind), pool, cmd.operation_id)


def start_fabric_operation(
    uow: UnitOfWork,
    kind: OperationKind[Any],
    resource: Aggregate,
    op_id: UUID | None,
    request: Request | None = None,
) -> Outcome:
    """An operation on a piece of the fabric (a host, a pool), recorded
    under the fabric's account, holding the resource's guard."""
    if op_id is None:
        op_id = uuid4()
        uow.known_absent((op_id,))
    require_new_id(uow, op_id)
    request = request or Request()
    op = Operation.create(
        kind=kind.name,
        resource_type=kind.resource_type,
        resource_id=resource.id,
        account=FABRIC_ACCOUNT,
        steps=kind.steps,
        params=kind.prepare(uow, resource, request),
        id=op_id,
    )
    uow.add(op)
    guard.acquire(uow, resource.id, op.id, kind.name)
    kind.begin(uow, op, resource, request)
    return Outcome(aggregate_id=op.id, value=str(resource.id))


@handles(ReportHostDrain)
def report_host_drain(uow: UnitOfWork, cmd: ReportHostDrain) -> Outcome:
    op, kind = _drain(uow, cmd.operation_id, "host")
    kind.report(uow, op, cmd.remaining, cmd.blocked)
    return Outcome(aggregate_id=op.id, value=op.status)


@handles(ReportPoolDrain)
def report_pool_drain(uow: UnitOfWork, cmd: ReportPoolDrain) -> Outcome:
    op, kind = _drain(uow, cmd.operation_id, "storage_pool")
    kind.report(uow, op, cmd.remaining, cmd.blocked)
    return Outcome(aggregate_id=op.id, value=op.status)


@handles(MoveOffPool)
def move_off_pool(uow: UnitOfWork, cmd: MoveOffPool) -> Outcome:
    drain, _ = _drain(uow, cmd.operation_id, "storage_pool")
    if drain.finished or drain.current_step != "migrate":
        raise Conflict(f"drain {drain.id} is {drain.status}", field="operation_id")
    pool = uow.get(StoragePool, drain.resource_id)
    pool.require_state(POOL_DRAINING, "drain")
    volume = load_ref(uow, Volume, cmd.volume_id, "volume_id")
    if volume.pool_id != pool.id:
        raise Conflict(f"volume {volume.id} is not in pool {pool.id}", field="volume_id")
    target = load_ref(uow, StoragePool, cmd.pool_id, "pool_id")
    if (target.scope, target.cluster_id, target.host_id) != (
        pool.scope,
        pool.cluster_id,
        pool.host_id,
    ) and not (target.scope == pool.scope == "zone"):
        raise Validation(
            f"pool {target.id} is not of pool {pool.id}'s scope ({pool.scope})", field="pool_id"
        )
    return volume_operation(
        uow,
        VolumeOperation(
            kind="volume.migrate",
            volume_id=volume.id,
            pool_id=target.id,
            operation_id=move_id(drain.id, volume.id),
        ),
    )


@handles(CancelStoragePoolMaintenance)
def cancel_pool_maintenance(uow: UnitOfWork, cmd: CancelStoragePoolMaintenance) -> Outcome:
    pool = load_ref(uow, StoragePool, cmd.pool_id, "pool_id")
    pool.cancel_maintenance()
    _fail_held(uow, pool.id)
    return Outcome(aggregate_id=pool.id)


@handles(MigrateOffHost)
def migrate_off_host(uow: UnitOfWork, cmd: MigrateOffHost) -> Outcome:
    drain, _ = _drain(uow, cmd.operation_id, "host")
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
    _fail_held(uow, host.id)
    return Outcome(aggregate_id=host.id)


def _fail_held(uow: UnitOfWork, resource_id: UUID) -> None:
    """The drain holding the resource's guard, if any, ends cancelled."""
    held = uow.find(guard.ResourceGuard, guard.guard_id(resource_id))
    if held is not None and held.operation_id is not None:
        op = uow.get(Operation, held.operation_id)
        kind_of(op.kind).fail(uow, op, CANCELLED, timed_out=False)


def _drain(uow: UnitOfWork, op_id: UUID, of: str | None = None) -> tuple[Operation, DrainKind[Any]]:
    op = uow.get(Operation, op_id)
    kind = kind_of(op.kind)
    if not isinstance(kind, DrainKind) or of not in (None, kind.resource_type):
        raise Validation(f"operation {op.id} is a {op.kind}, not a drain", field="operation_id")
    return op, kind
