"""Public names of everything on the bus: topics, CloudEvents types, schemas.

These strings are the contract with integrators; they derive from the public
aggregate names in engine.catalog and each event class's version.
"""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.utils import get_topic

from cloud_engine.engine.catalog import AGGREGATES, event_classes

TYPE_PREFIX = "io.cloudengine"
SPEC_VERSION = "1.0"


class TypeName(msgspec.Struct, frozen=True):
    """A CloudEvents type's parts: io.cloudengine.<aggregate>.<name>.v<version>."""

    aggregate: str  # "vm"
    name: str  # "started"
    version: int  # the event class's class_version

    @property
    def ce_type(self) -> str:
        return f"{TYPE_PREFIX}.{self.aggregate}.{self.name}.v{self.version}"

    @property
    def event(self) -> str:
        """The event whatever its version, as the work kinds name it: "vm.started"."""
        return f"{self.aggregate}.{self.name}"


def parse_type(ce_type: str) -> TypeName | None:
    """The parts of a ce_type header; None if it is not one of ours."""
    head, _, rest = ce_type.rpartition(".v")
    prefix, _, event = head.partition(f"{TYPE_PREFIX}.")
    aggregate, dot, name = event.partition(".")
    if prefix or not dot or "." in name or not (aggregate and name):
        return None
    if not (rest.isascii() and rest.isdigit()):
        return None
    return TypeName(aggregate, name, int(rest))


def aggregate_of(event: str) -> str:
    """The aggregate of an event named without its version ("vm.started")."""
    return event.partition(".")[0]


class EventType(TypeName, frozen=True):
    """A published event type and the event class it is stored as."""

    cls: type[Any]

    @property
    def schema_path(self) -> str:
        """Where the JSON Schema of this event's data is kept in this repository."""
        return f"schemas/events/{self.ce_type}.json"

    @property
    def schema_uri(self) -> str:
        """The ce_dataschema attribute: an absolute URI naming that schema
        (CloudEvents requires a URI; the schema's "$id" is the same)."""
        return f"urn:cloudengine:schema:{self.ce_type}"


def topic_for(prefix: str, aggregate: str) -> str:
    return f"{prefix}.{aggregate}.events"


def dead_letter_topic(prefix: str, group: str) -> str:
    return f"{prefix}.dlq.{group}"


def all_event_types() -> list[EventType]:
    types: list[EventType] = []
    for aggregate, cls in AGGREGATES.items():
        for name, event_cls in event_classes(cls).items():
            version = int(getattr(event_cls, "class_version", 1))
            types.append(EventType(aggregate, name, version, event_cls))
    return types


_by_stored_topic: dict[str, EventType] = {}


def event_type_of(stored_topic: str) -> EventType:
    """The public type of a stored event, from the store's topic column."""
    if not _by_stored_topic:
        for event_type in all_event_types():
            _by_stored_topic[get_topic(event_type.cls)] = event_type
    try:
        return _by_stored_topic[stored_topic]
    except KeyError:
        raise LookupError(f"stored event topic {stored_topic!r} has no public type") from None
