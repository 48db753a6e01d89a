"""The seam between command handlers and storage.

Handlers only see a UnitOfWork: get aggregates by id, add new ones. The command
service provides one backed by the event store and its cache; unit tests use
InMemoryUnitOfWork, which commits into a dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar
from uuid import UUID

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.errors import NotFound

A = TypeVar("A", bound=Aggregate)


class UnitOfWork(Protocol):
    def get(self, cls: type[A], aggregate_id: UUID) -> A: ...

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None: ...

    def add(self, aggregate: Aggregate) -> None: ...

    def known_absent(self, ids: Iterable[UUID]) -> None:
        """Ids made from a uuid4 the handler just drew: no aggregate can have
        one yet, so looking them up may answer None without asking the store."""
        ...

    def changed(self) -> list[Aggregate]:
        """The aggregates with events not stored yet (engine/quotas.py reads
        them after the handler, in the same transaction)."""
        ...


def checked(cls: type[A], aggregate: Aggregate | None, aggregate_id: UUID) -> A:
    """Narrow a loaded aggregate to the expected type or raise NotFound."""
    if aggregate is None or not isinstance(aggregate, cls):
        raise NotFound(f"{cls.entity} {aggregate_id} not found", field="id")
    return aggregate


class InMemoryUnitOfWork:
    """Dict-backed unit of work for fast unit tests of handlers."""

    def __init__(self) -> None:
        self.aggregates: dict[UUID, Aggregate] = {}

    def get(self, cls: type[A], aggregate_id: UUID) -> A:
        return checked(cls, self.aggregates.get(aggregate_id), aggregate_id)

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        aggregate = self.aggregates.get(aggregate_id)
        return aggregate if isinstance(aggregate, cls) else None

    def add(self, aggregate: Aggregate) -> None:
        self.aggregates[aggregate.id] = aggregate

    def known_absent(self, ids: Iterable[UUID]) -> None:
        pass  # every lookup is a dict read here

    def changed(self) -> list[Aggregate]:
        return [a for a in self.aggregates.values() if a.pending_events]

    def commit(self) -> list[object]:
        """Collect pending events, as the real store would persist them."""
        events: list[object] = []
        for aggregate in self.aggregates.values():
            events.extend(aggregate.collect_events())
        return events
