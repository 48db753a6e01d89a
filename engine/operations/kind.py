"""OperationKind: what every kind of operation (vm.deploy, vm.stop,
volume.resize, ...) implements, and the request it is started with.

An Operation aggregate records steps and a status; what a step does is its
kind's. The engine calls a kind at four points, each inside one transaction
that also records the outcome on the Operation, so the operation never
disagrees with the resources it changed:

    prepare  before the Operation exists: check the request, say what the
             operation records (its params)
    begin    in the same creating transaction, after the Operation and the
             resource's guard: the first action (a refused one records
             nothing)
    place    the engine's planner chose a host (and pools): reserve there
             (only kinds with `placed`; the others refuse)
    advance  an event about the operation arrived or the sweep came by: do
             what the current state calls for, once (idempotent)
    fail     from outside: no host fits, or a step got no answer in time;
             compensate what earlier steps did

The shape follows Nova's conductor tasks (nova/conductor/tasks/base.py: one
TaskBase, one module per task), with advance in place of execute (an
operation waits on effectors between steps, so it is driven by events, not
run through) and fail in place of rollback. Kinds are registered in
engine/operations/registry.py; that table is the only dispatch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Generic, Literal, TypeVar
from uuid import UUID

import msgspec

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.errors import Validation
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.snapshot import SnapshotKind

ResourceType = Literal["vm", "volume", "host", "storage_pool"]
R = TypeVar("R", bound=Aggregate)


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """What a client asked beyond the kind and the resource: the fields of
    the VmOperation and VolumeOperation commands a kind reads, under their
    names there (errors name them). The command handlers copy them here, so
    kinds do not import engine.commands, which imports them."""

    host_id: UUID | None = None  # vm.start, vm.migrate: on this host
    forced: bool = False  # vm.stop: power off instead of a guest shutdown
    vm_id: UUID | None = None  # volume.attach: to this VM
    new_size_bytes: int | None = None  # volume.resize
    snapshot_id: UUID | None = None  # volume.revert: to this one; volume.snapshot: its id
    snapshot_name: str = "snapshot"  # volume.snapshot
    snapshot_kind: SnapshotKind = "internal"  # volume.snapshot
    cpus: int | None = None  # vm.scale: the new vCPUs (None: unchanged)
    ram_mb: int | None = None  # vm.scale: the new RAM (None: unchanged)
    pool_id: UUID | None = None  # volume.migrate: to this pool
    iso_id: UUID | None = None  # vm.attach_iso: this ISO template
    vm_ids: tuple[UUID, ...] = ()  # host.ha: the VMs it restarts, in order


class OperationKind(ABC, Generic[R]):
    """One kind of operation on one type of resource (R, its aggregate).

    Implementations are stateless: one instance per kind, in the registry.
    """

    name: ClassVar[str]  # the Operation's kind, as stored and published
    resource_type: ClassVar[ResourceType]
    steps: ClassVar[tuple[str, ...]]
    # The first step is "place", done by the engine's planner (PlaceOperation).
    placed: ClassVar[bool] = False
    # Placed with its disks where they are (a start, a migration): the planner
    # keeps the VM in their pool's cluster and plans no new volume. A deploy
    # places disks it creates.
    keeps_disks: ClassVar[bool] = False
    # A step waiting longer than the step deadline is failed (the manager's
    # sweep); a kind that waits on people, not effectors (a host's drain),
    # has none.
    deadline: ClassVar[bool] = True

    @abstractmethod
    def prepare(self, uow: UnitOfWork, resource: R, request: Request) -> OperationParams:
        """Check the request and return what the operation records."""

    @abstractmethod
    def begin(self, uow: UnitOfWork, op: Operation, resource: R, request: Request) -> None:
        """The first action, in the operation's creating transaction."""

    def place(
        self, uow: UnitOfWork, op: Operation, host_id: UUID, pool_ids: Sequence[UUID]
    ) -> bool:
        """The place step with the planner's choice; False if it was done
        already. Kinds that are not placed refuse."""
        raise Validation(f"{self.name} operations are not placed", field="operation_id")

    @abstractmethod
    def advance(self, uow: UnitOfWork, op: Operation) -> None:
        """Do what the current state calls for, once."""

    @abstractmethod
    def fail(self, uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool) -> None:
        """Fail the operation from outside; timed_out: what waits for an
        effector is failed too, so compensation does not wait for it."""
