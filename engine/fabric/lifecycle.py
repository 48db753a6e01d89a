"""The Enabled/Disabled lifecycle every fabric aggregate shares.

An operator disables a zone, pod, cluster, host, storage pool, image store
or physical network to stop new placements on it, and enables it again.
The commands and their rule (enable only what is Disabled, disable only
what is Enabled) are written once here.

The events cannot be: the eventsourcing library names an event class by
its module and qualified name in every stored event ("engine.fabric.zone:
Zone.Enabled"), and the log is never rewritten. An @event method defined
once on this base would give every aggregate the one class
"engine.fabric.lifecycle:Switchable.Enabled" to write, so the topics the
log already holds would no longer be the ones written. Instead each
subclass gets its own _enabled and _disabled @event methods as the class
is created, before the library turns the @event methods of the class's own
namespace into event classes: they become Zone.Enabled, Pod.Enabled, ...,
in the subclass's module, exactly as when each aggregate declared them.
tests/unit/test_fabric_lifecycle.py loads rows written before and checks
new ones are written the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate

Switch = Literal["Enabled", "Disabled"]
# The @event method each subclass gets, and the event (and state) it records.
_EVENTS: tuple[tuple[str, Switch], ...] = (("_enabled", "Enabled"), ("_disabled", "Disabled"))


def _setting(cls: type, method: str, state: Switch) -> Callable[[Any], None]:
    """A new function for each class: the library maps each decorated
    function to one event class, so two aggregates cannot share one."""

    def apply(self: Any) -> None:
        self.state = state

    apply.__name__ = method
    apply.__qualname__ = f"{cls.__qualname__}.{method}"
    apply.__module__ = cls.__module__
    return apply


class Switchable(Aggregate):
    """An aggregate an operator enables and disables (its state starts Enabled)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        for method, state in _EVENTS:
            if method not in cls.__dict__:
                setattr(cls, method, event(state)(_setting(cls, method, state)))
        # The library's hook, which defines the event classes, runs after.
        super().__init_subclass__(**kwargs)

    if TYPE_CHECKING:
        # Set on each subclass by __init_subclass__.
        def _enabled(self) -> None: ...

        def _disabled(self) -> None: ...

    def enable(self) -> None:
        self.require_state(["Disabled"], "enable")
        self._enabled()

    def disable(self) -> None:
        self.require_state(["Enabled"], "disable")
        self._disabled()
