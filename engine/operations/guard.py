"""The per-resource guard: one running operation per resource.

A ResourceGuard aggregate per guarded resource (its id derived from the
resource's) records which operation holds it. An operation takes the guard
in the same transaction that creates it and gives it back in the one that
finishes it, so two conflicting requests on one VM cannot both start: the
second is refused (409) naming the operation that runs. Optimistic
concurrency on the guard's version settles a race between two engines.
"""

from __future__ import annotations

import uuid
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.unit_of_work import UnitOfWork

_GUARDS = UUID("3c0a5f7e-2d41-4b8e-9f1a-6e2b7d9c4a10")


def guard_id(resource_id: UUID) -> UUID:
    return uuid.uuid5(_GUARDS, str(resource_id))


class ResourceGuard(Aggregate):
    entity = "resource guard"

    @event("Created")
    def __init__(self, resource_id: UUID) -> None:
        self.resource_id = resource_id
        self.operation_id: UUID | None = None
        self.operation_kind: str | None = None

    @property
    def state(self) -> str:  # type: ignore[override]
        return "Free" if self.operation_id is None else "Held"

    def acquire(self, operation_id: UUID, kind: str) -> None:
        if self.operation_id == operation_id:
            return
        if self.operation_id is not None:
            raise Conflict(
                f"{kind} refused: operation {self.operation_id} ({self.operation_kind}) is"
                f" still running on {self.resource_id}",
                field="id",
            )
        self._acquired(operation_id, kind)

    def release(self, operation_id: UUID) -> None:
        if self.operation_id == operation_id:
            self._released(operation_id)

    @event("Acquired")
    def _acquired(self, operation_id: UUID, kind: str) -> None:
        self.operation_id = operation_id
        self.operation_kind = kind

    @event("Released")
    def _released(self, operation_id: UUID) -> None:
        self.operation_id = None
        self.operation_kind = None


def acquire(uow: UnitOfWork, resource_id: UUID, operation_id: UUID, kind: str) -> None:
    gid = guard_id(resource_id)
    guard = uow.find(ResourceGuard, gid)
    if guard is None:
        guard = ResourceGuard._new(id=gid, resource_id=resource_id)
        uow.add(guard)
    guard.acquire(operation_id, kind)


def release(uow: UnitOfWork, resource_id: UUID, operation_id: UUID) -> None:
    guard = uow.find(ResourceGuard, guard_id(resource_id))
    if guard is not None:
        guard.release(operation_id)
