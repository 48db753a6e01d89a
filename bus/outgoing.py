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
from cloud_engine.bus.relay_batch import SMALL, length_of, varint
from cloud_engine.engine.mapper import MsgspecMapper

_encoder = msgspec.json.Encoder()


class _StoredVersion(msgspec.Struct):
    # The mapper stores "class_version" for classes past version 1 only.
    class_version: int = 1


_stored_version = msgspec.json.Decoder(_StoredVersion)


@dataclass(frozen=True)
class _Kind:
    event_type: EventType
    topic: str
    struct: type[msgspec.Struct]
    decoder: msgspec.json.Decoder[Any]
    fields: tuple[str, ...]
    constant: tuple[tuple[str, bytes], ...]
    # The record's header count and constant headers in their wire form.
    wire_headers: bytes


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
            constant = (
                ("ce_specversion", SPEC_VERSION.encode()),
                ("ce_source", self.source),
                ("ce_type", event_type.ce_type.encode()),
                ("ce_dataschema", event_type.schema_uri.encode()),
                ("content-type", b"application/json"),
            )
            wire = [varint(len(constant) + len(_VARIABLE_HEADERS))]
            for name, value in constant:
                wire += [length_of(name.encode()), name.encode(), length_of(value), value]
            kind = self._kinds[stored_topic] = _Kind(
                event_type=event_type,
                topic=topic_for(self.topic_prefix, event_type.aggregate),
                struct=struct,
                decoder=msgspec.json.Decoder(struct),
                fields=struct.__struct_fields__,
                constant=constant,
                wire_headers=b"".join(wire),
            )
        return kind

    def _data(
        self, kind: _Kind, aggregate_id: UUID, version: int, stored_topic: str, state: bytes
    ) -> Any:
        if kind.event_type.version == 1:
            return kind.decoder.decode(state)
        if _stored_version.decode(state).class_version == kind.event_type.version:
            # Stored in its current version: nothing to upcast, so decode it
            # like a v1 event (the data Struct ignores "class_version").
            return kind.decoder.decode(state)
        stored = StoredEvent(aggregate_id, version, stored_topic, state)
        event = self._mapper.to_domain_event(stored)
        values = {name: getattr(event, name) for name in kind.fields}
        values["timestamp"] = _encoder.encode(values["timestamp"])[1:-1].decode()
        return kind.struct(**values)

    def record(
        self, position: int, aggregate_id: UUID, version: int, stored_topic: str, state: bytes
    ) -> Record:
        kind = self._kind(stored_topic)
        data = self._data(kind, aggregate_id, version, stored_topic, state)
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

    def wire(
        self, position: int, aggregate_id: UUID, version: int, stored_topic: str, state: bytes
    ) -> tuple[str, bytes, bytes]:
        """The record() of an event in Kafka's wire form: (topic, key, the
        record's bytes from the key length on), for relay_batch.BatchWriter.
        Same key, value and headers, in the same order, as record()."""
        kind = self._kind(stored_topic)
        data = self._data(kind, aggregate_id, version, stored_topic, state)
        key = str(aggregate_id).encode()
        value = _encoder.encode(data)
        meta = data.meta
        small = SMALL
        vs = b"%d" % version
        ps = b"%d" % position
        ts = data.timestamp.encode()
        correlation = meta.correlation_id.encode()
        causation = meta.causation_id.encode()
        request = meta.request_id.encode()
        actor = meta.actor.encode()
        body = b"".join(
            (
                length_of(key),
                key,
                length_of(value),
                value,
                kind.wire_headers,
                _H_ID,
                small[len(key) + 1 + len(vs)],
                key,
                b":",
                vs,
                _H_TIME,
                length_of(ts),
                ts,
                _H_SUBJECT,
                length_of(key),
                key,
                _H_POSITION,
                small[len(ps)],
                ps,
                _H_VERSION,
                small[len(vs)],
                vs,
                _H_CORRELATION,
                length_of(correlation),
                correlation,
                _H_CAUSATION,
                length_of(causation),
                causation,
                _H_REQUEST,
                length_of(request),
                request,
                _H_ACTOR,
                length_of(actor),
                actor,
            )
        )
        return kind.topic, key, body


_VARIABLE_HEADERS = (
    "ce_id",
    "ce_time",
    "ce_subject",
    "ce_position",
    "ce_aggregateversion",
    "ce_correlationid",
    "ce_causationid",
    "ce_requestid",
    "ce_actor",
)
# Each variable header's name with its length prefix, as on the wire.
(
    _H_ID,
    _H_TIME,
    _H_SUBJECT,
    _H_POSITION,
    _H_VERSION,
    _H_CORRELATION,
    _H_CAUSATION,
    _H_REQUEST,
    _H_ACTOR,
) = (length_of(n.encode()) + n.encode() for n in _VARIABLE_HEADERS)
