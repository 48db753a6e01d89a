"""CloudEvents back into domain events, for consumers that run the domain
(projections rebuild state with the aggregates themselves)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from eventsourcing.domain import CanInitAggregate
from eventsourcing.utils import get_topic

from cloud_engine.bus.cloudevents import CloudEvent, data_struct
from cloud_engine.bus.naming import EventType, all_event_types
from cloud_engine.engine.catalog import AGGREGATES


@dataclass(frozen=True)
class _Kind:
    event_type: EventType
    decoder: msgspec.json.Decoder[Any]
    fields: tuple[str, ...]
    aggregate_topic: str | None  # for "created" events


_kinds: dict[str, _Kind] = {}


def _kind(ce_type: str) -> _Kind:
    if not _kinds:
        for t in all_event_types():
            struct = data_struct(t)
            created = issubclass(t.cls, CanInitAggregate)
            _kinds[t.ce_type] = _Kind(
                event_type=t,
                decoder=msgspec.json.Decoder(struct),
                fields=struct.__struct_fields__,
                aggregate_topic=get_topic(AGGREGATES[t.aggregate]) if created else None,
            )
    try:
        return _kinds[ce_type]
    except KeyError:
        raise LookupError(f"unknown event type {ce_type!r}") from None


def domain_event(event: CloudEvent) -> Any:
    """The domain event a CloudEvent carries (its data is the current version)."""
    kind = _kind(event.type)
    data = kind.decoder.decode(event.data)
    state = {name: getattr(data, name) for name in kind.fields}
    state["originator_id"] = event.aggregate_id
    state["originator_version"] = event.aggregate_version
    if kind.aggregate_topic is not None:
        state["originator_topic"] = kind.aggregate_topic
    obj = object.__new__(kind.event_type.cls)
    object.__setattr__(obj, "__dict__", state)
    return obj
