"""host.maintenance: prepare (the host PrepareForMaintenance: nothing new
is placed on it) -> migrate (its VMs moved away) -> maintenance (the host
in Maintenance).

The moving is not done here: the drainer (automation/drain.py) drives it
through the same commands as any client (a vm.migrate per VM, the planner
choosing the destination within the VM's affinity rules) and reports what
it found with ReportHostDrain: how many VMs are left on the host and the
ones that cannot move, each with its reason. Blocked VMs put the host in
ErrorInMaintenance (the reasons on the host and in the operation's
error); once nothing is left and the host holds no capacity, the host
enters Maintenance and the operation succeeds.

A drain waits as long as it takes (a VM may be busy with an operation of
its own, a blocked one may be dealt with by hand), so its steps have no
deadline. It ends early only when an admin cancels (CancelHostMaintenance:
the host Enabled again, VMs that moved stay where they are) or calls
enter-maintenance again on an ErrorInMaintenance host (a new drain, every
VM tried again, once this one ended).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import ClassVar, Protocol, TypeVar
from uuid import UUID

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.kind import OperationKind, Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.unit_of_work import UnitOfWork

CANCELLED = "maintenance cancelled by an admin"


def migration_id(drain_id: UUID, vm_id: UUID) -> UUID:
    """The one vm.migrate a drain asks for a VM: the same after a restart
    of the drainer, so it is never asked twice."""
    return uuid.uuid5(drain_id, f"migrate:{vm_id}")


class Drainable(Protocol):
    """A host or a storage pool: what a drain asks of it."""

    id: UUID
    state: str

    @property
    def reservations(self) -> Mapping[UUID, object]: ...

    def prepare_for_maintenance(self) -> None: ...

    def maintenance_blocked(self, blockers: tuple[str, ...]) -> None: ...

    def enter_maintenance(self) -> None: ...


D = TypeVar("D", bound=Aggregate)
DRAINING = ("PrepareForMaintenance", "ErrorInMaintenance")


class DrainKind(OperationKind[D]):
    """prepare -> migrate -> maintenance on a resource that holds
    reservations (a host its VMs' capacity, a pool its volumes' space); the
    drainer reports, this kind decides."""

    steps = ("prepare", "migrate", "maintenance")
    deadline = False
    aggregate: ClassVar[type[Aggregate]]

    def _resource(self, uow: UnitOfWork, op: Operation) -> Drainable:
        found: Drainable = uow.get(self.aggregate, op.resource_id)  # type: ignore[assignment]
        return found

    def prepare(self, uow: UnitOfWork, resource: D, request: Request) -> OperationParams:
        return OperationParams()

    def begin(self, uow: UnitOfWork, op: Operation, resource: D, request: Request) -> None:
        self._resource(uow, op).prepare_for_maintenance()
        op.complete_step("prepare")

    def advance(self, uow: UnitOfWork, op: Operation) -> None:
        # Driven by the drainer's reports; an event on the resource moves nothing.
        if op.finished:
            return
        resource = self._resource(uow, op)
        if resource.state not in DRAINING:
            # Cancelled meanwhile (or declared down): it ends here.
            self.fail(
                uow, op, f"{op.resource_type} {resource.id} is {resource.state}", timed_out=False
            )

    def report(
        self, uow: UnitOfWork, op: Operation, remaining: int, blocked: tuple[str, ...]
    ) -> None:
        """The drainer's finding: what is left on the resource (moving or
        not), what of it cannot move."""
        if op.finished or op.current_step != "migrate":
            return
        resource = self._resource(uow, op)
        if resource.state not in DRAINING:
            self.advance(uow, op)
            return
        if blocked:
            resource.maintenance_blocked(blocked)
            return
        if remaining or resource.reservations:
            return
        resource.enter_maintenance()
        op.complete_step("migrate")
        op.complete_step("maintenance")
        guard.release(uow, resource.id, op.id)

    def fail(self, uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool) -> None:
        if op.status not in ("pending", "running"):
            return
        op.fail(reason, compensate=False)
        guard.release(uow, op.resource_id, op.id)


class HostMaintenance(DrainKind[Host]):
    name = "host.maintenance"
    resource_type = "host"
    aggregate = Host
