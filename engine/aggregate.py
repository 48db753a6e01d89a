"""The base class every cloud-engine aggregate derives from.

It is the eventsourcing library's Aggregate with two additions: every event
carries an EventMeta (actor, request id, correlation id, causation id) taken from
the command being executed, and a small state-machine guard. Command methods
check all their preconditions first and only then call an @event method, so a
refused command raises a DomainError with no event emitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate as _LibraryAggregate
from eventsourcing.domain import CanInitAggregate, CanMutateAggregate

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.metadata import EventMeta, current_meta


class Aggregate(_LibraryAggregate):
    entity: ClassVar[str] = "entity"

    class Event(_LibraryAggregate.Event):
        meta: EventMeta

    class Created(Event, _LibraryAggregate.Created):
        pass

    def trigger_event(
        self,
        event_class: type[CanMutateAggregate[UUID]],
        **kwargs: Any,
    ) -> None:
        kwargs["meta"] = current_meta()
        super().trigger_event(event_class, **kwargs)

    @classmethod
    def _create(
        cls,
        event_class: type[CanInitAggregate[UUID]],
        *,
        id: UUID | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs["meta"] = current_meta()
        return super()._create(event_class, id=id, **kwargs)

    @classmethod
    def _new(cls, id: UUID | None = None, **kwargs: Any) -> Any:
        """Construct through the "Created" event, with a caller-chosen id if given
        (the library's constructor only accepts an id via _create)."""
        if id is None:
            return cls(**kwargs)
        return cls._create(event_class=cls.Created, id=id, **kwargs)

    if TYPE_CHECKING:
        # Declared for type checkers only: a class-level annotation would make
        # the library turn every aggregate into a dataclass.
        state: str

    def require_state(self, allowed: Iterable[str], action: str) -> None:
        if self.state not in tuple(allowed):
            raise InvalidTransition(f"{self.entity} {self.id}", self.state, action, owner=self.id)


def require(condition: bool, message: str, *, field: str | None = None) -> None:
    """Raise Validation unless condition holds; keeps command methods short."""
    if not condition:
        raise Validation(message, field=field)


def require_name(name: str, field: str = "name") -> None:
    require(bool(name.strip()), f"{field} must not be empty", field=field)
    require(len(name) <= 255, f"{field} must be at most 255 characters", field=field)
    # PostgreSQL text and jsonb cannot hold U+0000: the read models could not
    # store the event.
    require("\x00" not in name, f"{field} must not contain NUL characters", field=field)
