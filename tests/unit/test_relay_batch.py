"""The relay's own record batches read back, with aiokafka's reader, exactly
as the records OutgoingCodec.record() describes."""

import json
import uuid

from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.util import encode_varint

from cloud_engine.bus.outgoing import OutgoingCodec
from cloud_engine.bus.relay_batch import BatchWriter, varint
from cloud_engine.engine.mapper import MsgspecMapper
from tests.scenarios import in_memory_scenario


def _rows() -> list[tuple[int, object, int, str, bytes]]:
    mapper = MsgspecMapper()
    rows = []
    for position, event in enumerate(in_memory_scenario().events, start=1):
        stored = mapper.to_stored_event(event)
        rows.append(
            (
                position,
                stored.originator_id,
                stored.originator_version,
                stored.topic,
                stored.state,
            )
        )
    return rows


def _read(writer: BatchWriter) -> list[tuple[int, bytes | None, bytes | None, list]]:
    out = []
    for built in writer.batches:
        batch = DefaultRecordBatch(bytes(built._build()))
        assert batch.validate_crc()
        assert built.record_count() == batch.last_offset_delta + 1
        out += [(r.offset, r.key, r.value, r.headers) for r in batch]
    return out


def test_wire_batches_hold_every_event_type_as_record_describes_it():
    codec = OutgoingCodec("cloudengine", "/test")
    rows = _rows()
    writer = BatchWriter(512 * 1024)
    for row in rows:
        topic, key, body = codec.wire(*row)
        expected = codec.record(*row)
        assert (topic, key) == (expected.topic, expected.key)
        writer.add(body)
    writer.flush()
    assert len(writer.batches) == 1
    got = _read(writer)
    want = [(r.key, r.value, r.headers) for r in (codec.record(*row) for row in rows)]
    assert [g[1:] for g in got] == want
    assert [g[0] for g in got] == list(range(len(rows)))


def test_small_limit_splits_in_order_and_an_oversized_record_gets_its_own_batch():
    codec = OutgoingCodec("cloudengine", "/test")
    rows = _rows()[:40]
    bodies = [codec.wire(*row)[2] for row in rows]
    writer = BatchWriter(3 * max(len(b) for b in bodies) + 61)
    for body in bodies:
        writer.add(body)
    writer.flush()
    assert len(writer.batches) > 1
    got = _read(writer)
    want = [(r.key, r.value, r.headers) for r in (codec.record(*row) for row in rows)]
    assert [g[1:] for g in got] == want

    tiny = BatchWriter(100)
    for body in bodies[:3]:
        tiny.add(body)
    tiny.flush()
    assert len(tiny.batches) == 3
    assert [g[1:] for g in _read(tiny)] == want[:3]


def test_varint_matches_kafka_encoding():
    for n in (0, 1, 63, 64, 127, 128, 8191, 8192, 16383, 16384, 1 << 21, (1 << 31) - 1):
        out = bytearray()
        encode_varint(n, out.append)
        assert varint(n) == bytes(out)


def test_an_event_stored_in_an_older_version_is_published_upcast():
    codec = OutgoingCodec("cloudengine", "/test")
    v1_state = (
        b'{"timestamp":"2025-03-01T10:00:00Z","originator_topic":"engine.fabric.zone:Zone",'
        b'"meta":{"actor":"legacy-import","request_id":"","correlation_id":"","causation_id":""},'
        b'"name":"old-zone","description":"from v1"}'
    )
    row = (7, uuid.uuid4(), 1, "engine.fabric.zone:Zone.Created", v1_state)
    record = codec.record(*row)
    data = json.loads(record.value)
    assert data["network_type"] == "Advanced"  # what upcast_v1_v2 adds
    assert "class_version" not in data and "originator_topic" not in data
    writer = BatchWriter(512 * 1024)
    writer.add(codec.wire(*row)[2])
    writer.flush()
    assert [g[1:] for g in _read(writer)] == [(record.key, record.value, record.headers)]
