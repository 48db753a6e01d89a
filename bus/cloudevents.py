"""CloudEvents Kafka protocol binding, binary mode.

Attributes travel as ce_* headers, the event's data (JSON) is the record value
and the record key is the aggregate id, so one entity's events share a
partition and keep their order. Extension attributes (lower-case, as the spec
requires): position (global position in the store), aggregateversion,
correlationid, causationid, requestid, actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import msgspec

from cloud_engine.bus.naming import EventType
from cloud_engine.engine.mapper import codec_for

# Internal to the store: which Python class rebuilds the aggregate.
_PRIVATE_FIELDS = frozenset({"originator_topic"})

Headers = list[tuple[str, bytes]]


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as a consumer sees it."""

    id: str
    source: str
    type: str
    subject: str
    time: str
    position: int
    aggregate_version: int
    correlation_id: str = ""
    causation_id: str = ""
    request_id: str = ""
    actor: str = ""
    data: bytes = b""
    # Where it was read from; for logs and dead letters, never for dedupe.
    topic: str = ""
    partition: int = -1
    offset: int = -1

    @property
    def aggregate_id(self) -> UUID:
        return UUID(self.subject)


class MalformedEvent(ValueError):
    """A record that is not a CloudEvent of ours (missing or bad headers)."""


def public_fields(event_type: EventType) -> tuple[str, ...]:
    return tuple(f for f in codec_for(event_type.cls).fields if f not in _PRIVATE_FIELDS)


def data_struct(
    event_type: EventType, *, overrides: dict[str, Any] | None = None, suffix: str = ""
) -> type[msgspec.Struct]:
    """A Struct describing exactly the published data of one event type
    (overrides replace a field's type, e.g. to keep a timestamp as text)."""
    mirror = codec_for(event_type.cls).mirror
    spec: list[Any] = []
    for info in msgspec.structs.fields(mirror):
        if info.name in _PRIVATE_FIELDS:
            continue
        kind = (overrides or {}).get(info.name, info.type)
        if info.required:
            spec.append((info.name, kind))
        elif info.default_factory is not msgspec.NODEFAULT:
            spec.append((info.name, kind, msgspec.field(default_factory=info.default_factory)))
        else:
            spec.append((info.name, kind, info.default))
    name = f"{event_type.aggregate}_{event_type.name}_v{event_type.version}{suffix}"
    return msgspec.defstruct(name, spec, kw_only=True, forbid_unknown_fields=False)


def from_record(
    headers: Sequence[tuple[str, bytes]],
    value: bytes | None,
    *,
    topic: str = "",
    partition: int = -1,
    offset: int = -1,
) -> CloudEvent:
    h = {k: v for k, v in headers}
    try:
        return CloudEvent(
            id=h["ce_id"].decode(),
            source=h["ce_source"].decode(),
            type=h["ce_type"].decode(),
            subject=h["ce_subject"].decode(),
            time=h["ce_time"].decode(),
            position=int(h["ce_position"]),
            aggregate_version=int(h["ce_aggregateversion"]),
            correlation_id=h.get("ce_correlationid", b"").decode(),
            causation_id=h.get("ce_causationid", b"").decode(),
            request_id=h.get("ce_requestid", b"").decode(),
            actor=h.get("ce_actor", b"").decode(),
            data=value or b"",
            topic=topic,
            partition=partition,
            offset=offset,
        )
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise MalformedEvent(f"not a cloud-engine CloudEvent: {e!r}") from None
