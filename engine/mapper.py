"""Maps domain events to stored events and back with msgspec.

Each event class gets a msgspec Struct mirror of its fields (built once from the
class's type hints), so a stored event is decoded and validated against its type
in one pass. The aggregate id and version live in their own columns and are not
repeated in the JSON. Events whose class declares class_version > 1 are stored
with that version; older payloads are upcast on read by the class's
upcast_vN_vN+1 static methods, never rewritten.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
)
from eventsourcing.utils import get_topic, resolve_topic

# Registers the stored topics of every aggregate and event (engine/topics.py)
# before the first one is written or read.
from cloud_engine.engine import catalog as _catalog  # noqa: F401

_ID_FIELDS = frozenset({"originator_id", "originator_version"})


class EventCodec(msgspec.Struct, frozen=True):
    mirror: type[msgspec.Struct]
    fields: tuple[str, ...]
    class_version: int
    decoder: msgspec.json.Decoder[Any]


_codecs: dict[type[Any], EventCodec] = {}


def codec_for(cls: type[Any]) -> EventCodec:
    codec = _codecs.get(cls)
    if codec is None:
        codec = _codecs[cls] = _build_codec(cls)
    return codec


def _build_codec(cls: type[Any]) -> EventCodec:
    # The library makes every event class a dataclass; its fields, resolved
    # type hints and defaults describe the payload.
    hints = typing.get_type_hints(cls)
    ordered: list[str] = []
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        if f.name in _ID_FIELDS:
            continue
        ordered.append(f.name)
        if f.default is not dataclasses.MISSING:
            spec.append((f.name, hints[f.name], f.default))
        elif f.default_factory is not dataclasses.MISSING:
            spec.append((f.name, hints[f.name], msgspec.field(default_factory=f.default_factory)))
        else:
            spec.append((f.name, hints[f.name]))
    mirror = msgspec.defstruct(
        cls.__qualname__.replace(".", "_"), spec, kw_only=True, module=cls.__module__
    )
    return EventCodec(
        mirror=mirror,
        fields=tuple(ordered),
        class_version=getattr(cls, "class_version", 1),
        decoder=msgspec.json.Decoder(mirror),
    )


_encoder = msgspec.json.Encoder()
# Subscripted once: typing.cast(X[Y], ...) would build X[Y] on every call.
_DomainEvent = DomainEventProtocol[UUID]
_untyped = msgspec.json.Decoder()


class MsgspecMapper(Mapper[UUID]):
    def __init__(self) -> None:
        super().__init__(transcoder=JSONTranscoder())

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        cls = type(domain_event)
        codec = codec_for(cls)
        state = {name: getattr(domain_event, name) for name in codec.fields}
        if codec.class_version > 1:
            state["class_version"] = codec.class_version
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(cls),
            state=_encoder.encode(state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        return self.decode(
            stored_event.originator_id,
            stored_event.originator_version,
            stored_event.topic,
            stored_event.state,
        )

    def decode(
        self, originator_id: UUID | str, originator_version: int, topic: str, state: bytes
    ) -> DomainEventProtocol[UUID]:
        """A domain event from a stored row's columns (no StoredEvent needed:
        replays decode millions of rows)."""
        cls = resolve_topic(topic)
        codec = codec_for(cls)
        try:
            if codec.class_version == 1:
                decoded = codec.decoder.decode(state)
            else:
                raw: dict[str, Any] = _untyped.decode(state)
                version = raw.pop("class_version", 1)
                while version < codec.class_version:
                    getattr(cls, f"upcast_v{version}_v{version + 1}")(raw)
                    version += 1
                decoded = msgspec.convert(raw, codec.mirror)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise MapperDeserialisationError(
                f"cannot decode event {topic} of {originator_id} v{originator_version}: {e}"
            ) from e
        fields = msgspec.structs.asdict(decoded)
        fields["originator_id"] = (
            originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
        )
        fields["originator_version"] = originator_version
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", fields)
        return typing.cast(_DomainEvent, domain_event)


def event_schema(cls: type[Any]) -> dict[str, Any]:
    """JSON Schema of an event's payload (used by schemas/ generation)."""
    codec: EventCodec = codec_for(cls)
    return msgspec.json.schema(codec.mirror)
