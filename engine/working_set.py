"""Aggregates loaded for one batch of commands, on top of the service's cache.

Handlers mutate cached aggregates in place (no deep copies on the hot path); if
the batch does not commit, every aggregate it touched is evicted so the next
attempt reloads committed state from the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TypeVar
from uuid import UUID

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.unit_of_work import checked

A = TypeVar("A", bound=Aggregate)


class AggregateCache:
    """Bounded LRU of committed aggregates."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[UUID, Aggregate] = OrderedDict()

    def get(self, aggregate_id: UUID) -> Aggregate | None:
        aggregate = self._items.get(aggregate_id)
        if aggregate is not None:
            self._items.move_to_end(aggregate_id)
        return aggregate

    def put(self, aggregate: Aggregate) -> None:
        if self.maxsize <= 0:
            return
        self._items[aggregate.id] = aggregate
        self._items.move_to_end(aggregate.id)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def evict(self, aggregate_id: UUID) -> None:
        self._items.pop(aggregate_id, None)

    def __len__(self) -> int:
        return len(self._items)


class WorkingSet:
    """The UnitOfWork handlers see while the service runs a batch."""

    def __init__(self, store: EventStore, cache: AggregateCache, *, check_new: bool) -> None:
        self._store = store
        self._cache = cache
        # Checking the store for every new id costs a round trip; the batch path
        # leaves duplicates to the primary key and the retry path checks.
        self._check_new = check_new
        self.aggregates: dict[UUID, Aggregate] = {}
        self._missing: set[UUID] = set()
        # Version of each stored aggregate when first read, and those written:
        # the rest must still be current when the batch commits.
        self._read_versions: dict[UUID, int] = {}
        self._written: set[UUID] = set()
        self.served_from_cache = False

    def _lookup(self, aggregate_id: UUID) -> Aggregate | None:
        aggregate = self.aggregates.get(aggregate_id)
        if aggregate is None and aggregate_id not in self._missing:
            aggregate = self._cache.get(aggregate_id)
            if aggregate is None:
                aggregate = self._store.load(aggregate_id)
            else:
                self.served_from_cache = True
            if aggregate is None:
                self._missing.add(aggregate_id)
            else:
                self.aggregates[aggregate_id] = aggregate
                self._read_versions[aggregate_id] = aggregate.version
        return aggregate

    def prefetch(self, ids: Iterable[UUID]) -> None:
        """Load, in one round trip, every aggregate a batch may look up that is
        not cached; ids that do not exist are remembered as missing, so checks
        for caller-chosen new ids cost nothing more."""
        wanted = [
            i
            for i in dict.fromkeys(ids)
            if i not in self.aggregates and i not in self._missing and self._cache.get(i) is None
        ]
        if not wanted:
            return
        found = self._store.load_many(wanted)
        for aggregate_id in wanted:
            aggregate = found.get(aggregate_id)
            if aggregate is None:
                self._missing.add(aggregate_id)
            else:
                self.aggregates[aggregate_id] = aggregate
                self._read_versions[aggregate_id] = aggregate.version

    def known_absent(self, ids: Iterable[UUID]) -> None:
        self._missing.update(i for i in ids if i not in self.aggregates)

    def get(self, cls: type[A], aggregate_id: UUID) -> A:
        return checked(cls, self._lookup(aggregate_id), aggregate_id)

    def find(self, cls: type[A], aggregate_id: UUID) -> A | None:
        aggregate = self._lookup(aggregate_id)
        return aggregate if isinstance(aggregate, cls) else None

    def add(self, aggregate: Aggregate) -> None:
        known = aggregate.id in self.aggregates or self._cache.get(aggregate.id) is not None
        if known or (self._check_new and self._lookup(aggregate.id) is not None):
            raise Conflict(f"{aggregate.entity} {aggregate.id} already exists", field="id")
        self._missing.discard(aggregate.id)
        self.aggregates[aggregate.id] = aggregate

    def changed(self) -> list[Aggregate]:
        return [a for a in self.aggregates.values() if a.pending_events]

    def pending_count(self) -> int:
        return sum(len(a.pending_events) for a in self.aggregates.values())

    def collect(self) -> list[tuple[Aggregate, list[object]]]:
        collected: list[tuple[Aggregate, list[object]]] = []
        for aggregate in self.aggregates.values():
            if aggregate.pending_events:
                self._written.add(aggregate.id)
                collected.append((aggregate, list(aggregate.collect_events())))
        return collected

    def reads(self) -> list[tuple[UUID, int]]:
        """Stored aggregates the batch read and did not write, with the
        version it read (the store refuses the commit if one moved since)."""
        return [(i, v) for i, v in self._read_versions.items() if i not in self._written]

    def commit_to_cache(self) -> None:
        for aggregate in self.aggregates.values():
            self._cache.put(aggregate)

    def evict_all(self) -> None:
        for aggregate_id in self.aggregates:
            self._cache.evict(aggregate_id)
