"""Stored event rows to Kafka records, on the relay's hot path.

For an event class at version 1 the stored JSON is decoded straight into the
Struct of its published data (skipping store-internal fields) and encoded
again: no domain object is built. Classes with a newer version go through the
mapper, which upcasts old payloads, so every event is published in its
current version. Header values that are the same for every event of a type are
encoded once.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import StoredEvent

from cloud_engine.bus.cloudevents import Headers, data_struct
from cloud_engine.bus.naming import SPEC_VERSION, EventType, event_type_of, topic_for
from cloud_engine.engine.mapper import MsgspecMapper

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class _Kind:
    event_type: EventType
    topic: str
    struct: type[msgspec.Struct]
    decoder: msgspec.json.Decoder[Any]
    fields: tuple[str, ...]
    constant: tuple[tuple[str, bytes], ...]


class Record(msgspec.Struct, frozen=True):
    topic: str
    key: bytes
    value: bytes
    headers: Headers


def partition_for(key: bytes, partitions: int) -> int:
    """Stable across runs and processes, so a republish keeps every aggregate
    on its partition. (crc32 rather than Java's murmur2: only the relay writes
    these topics, and the pure-Python murmur2 costs more than the rest of an
    event.)"""
    return zlib.crc32(key) % partitions


class OutgoingCodec:
    def __init__(self, topic_prefix: str, source: str) -> None:
        self.topic_prefix = topic_prefix
        self.source = source.encode()
        self._mapper = MsgspecMapper()
        self._kinds: dict[str, _Kind] = {}

    def _kind(self, stored_topic: str) -> _Kind:
        kind = self._kinds.get(stored_topic)
        if kind is None:
            event_type = event_type_of(stored_topic)
            # The timestamp stays the RFC 3339 text it is stored as: the same
            # JSON out, and ce_time without a datetime parsed and formatted.
            struct = data_struct(event_type, overrides={"timestamp": str}, suffix="_wire")
            kind = self._kinds[stored_topic] = _Kind(
                event_type=event_type,
                topic=topic_for(self.topic_prefix, event_type.aggregate),
                struct=struct,
                decoder=msgspec.json.Decoder(struct),
                fields=struct.__struct_fields__,
                constant=(
                    ("ce_specversion", SPEC_VERSION.encode()),
                    ("ce_source", self.source),
                    ("ce_type", event_type.ce_type.encode()),
                    ("ce_dataschema", event_type.schema_uri.encode()),
                    ("content-type", b"application/json"),
                ),
            )
        return kind

    def record(
        self, position: int, aggregate_id: UUID, version: int, stored_topic: str, state: bytes
    ) -> Record:
        kind = self._kind(stored_topic)
        data: Any
        if kind.event_type.version == 1:
            data = kind.decoder.decode(state)
        else:
            event = self._mapper.to_domain_event(
                StoredEvent(aggregate_id, version, stored_topic, state)
            )
            values = {name: getattr(event, name) for name in kind.fields}
            values["timestamp"] = _encoder.encode(values["timestamp"])[1:-1].decode()
            data = kind.struct(**values)
        key = str(aggregate_id).encode()
        meta = data.meta
        headers: Headers = [
            *kind.constant,
            ("ce_id", b"%s:%d" % (key, version)),
            ("ce_time", data.timestamp.encode()),
            ("ce_subject", key),
            ("ce_position", b"%d" % position),
            ("ce_aggregateversion", b"%d" % version),
            ("ce_correlationid", meta.correlation_id.encode()),
            ("ce_causationid", meta.causation_id.encode()),
            ("ce_requestid", meta.request_id.encode()),
            ("ce_actor", meta.actor.encode()),
        ]
        return Record(kind.topic, key, _encoder.encode(data), headers)
