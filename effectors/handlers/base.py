"""What a work kind's handler is: how an effector reads its plan and acts.

A work kind is declared once, in bus/work.py (the event that asks for it,
the commands that record its result). Its effector side is a Handler
registered under the same name in its family's module here (vm.py,
volume.py, template.py): `plan` reads what the work needs from the read
models, `act` does what is left on the host. The service and the executor
only look the handler up; neither knows any kind.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar
from uuid import UUID

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.desired import ReadModels

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor


class Plan(Protocol):
    """Everything one work item needs, read before acting."""

    @property
    def host_id(self) -> UUID | None:
        """The host the work is done on (None: no host, e.g. a download)."""
        ...


P = TypeVar("P", bound=Plan)


@dataclass(frozen=True)
class Reads:
    """What plans are read from, and which zones this effector serves."""

    models: ReadModels
    zones: frozenset[UUID] | None = None  # None: all

    def serves(self, zone_id: UUID) -> bool:
        return self.zones is None or zone_id in self.zones


@dataclass(frozen=True)
class Handler(Generic[P]):
    # The plan, waiting until the read models reflect the requesting
    # version; None when the work is another effector's (another zone) or
    # cannot be placed (logged).
    plan: Callable[[Reads, WorkItem], Awaitable[P | None]]
    # Does what is left (observe, then act; blocking: run in a thread) and
    # returns the state observed after it; raising one of `errors` makes a
    # failed result with its message.
    act: Callable[[Executor, WorkItem, P], str]
    # Anything else is a bug: it reaches the consumer, which retries and
    # then dead-letters the event.
    errors: tuple[type[Exception], ...]


# Work items on different aggregates run concurrently: what they share on a
# host (a network, a pool, a template's base image) is made under one lock.
_locks: dict[tuple[str, ...], threading.Lock] = {}
_locks_guard = threading.Lock()


def shared(*key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())
