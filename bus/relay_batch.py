"""Kafka record batches (format v2, uncompressed) built from encoded records.

The relay's records are mostly the same bytes event after event: five
constant headers per event type, header names, a 36-byte key. OutgoingCodec
writes each record's wire form straight into bytes (one join per event), and
this module frames them into a batch: no header tuples, no per-record builder
call, no metadata object per record. The result is handed to aiokafka as a
finished batch (PrebuiltBatch), which its producer sends like its own.

Layout (Kafka protocol, "Record Batch"): a 61-byte header, then per record
varint length, attributes, timestamp delta, offset delta, key, value,
headers. Every record of a batch carries the batch's timestamp (delta 0).
"""

from __future__ import annotations

import struct
import time

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record._crecords import crc32c_cython

_HEADER = struct.Struct(">qiibIhiqqqhii")
_AFTER_LENGTH = 12  # base offset and length are not counted in the length
_AFTER_CRC = 21  # the CRC covers the bytes from the attributes on
_HEADER_TAIL = struct.Struct(">hiqqqhii")  # attributes .. record count
_BATCH_PREFIX = struct.Struct(">qiibI")  # base offset .. CRC


def varint(value: int) -> bytes:
    """Kafka's zigzag varint of a non-negative int."""
    value <<= 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Lengths and offset deltas are nearly always small: look them up.
SMALL = tuple(varint(n) for n in range(1 << 14))


def length_of(data: bytes) -> bytes:
    """The varint length prefix of a field."""
    n = len(data)
    return SMALL[n] if n < 16384 else varint(n)


class PrebuiltBatch(BatchBuilder):  # type: ignore[misc]  # aiokafka: untyped
    """A finished batch for AIOKafkaProducer.send_batch: aiokafka's own
    BatchBuilder with its buffer already built (it never appends to it)."""

    def __init__(self, buffer: bytes, count: int) -> None:
        # BatchBuilder.__init__ would allocate a builder this batch never uses.
        self._buffer = buffer
        self._relative_offset = count
        self._closed = True
        self._key_serializer = None
        self._value_serializer = None


class BatchWriter:
    """Collects encoded records for one partition into batches of at most
    max_bytes (a record larger than that gets a batch of its own)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.batches: list[PrebuiltBatch] = []
        self._records: list[bytes] = []
        self._size = _HEADER.size

    def add(self, body: bytes) -> None:
        """body: a record's wire form from its key on (OutgoingCodec.wire)."""
        records = self._records
        n = len(records)
        # attributes 0, timestamp delta 0, offset delta n, then the body
        rest = b"\x00\x00" + (SMALL[n] if n < 16384 else varint(n)) + body
        size = len(rest)
        record = (SMALL[size] if size < 16384 else varint(size)) + rest
        if records and self._size + len(record) > self.max_bytes:
            self.flush()
            self.add(body)
            return
        records.append(record)
        self._size += len(record)

    def flush(self) -> None:
        if self._records:
            self.batches.append(frame(self._records))
            self._records = []
            self._size = _HEADER.size


def frame(records: list[bytes], timestamp_ms: int | None = None) -> PrebuiltBatch:
    """One batch holding the records (offset deltas 0..n-1, in order)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    count = len(records)
    # attributes 0; last offset delta; first and max timestamp; no producer
    # id, epoch -1, base sequence 0 (as aiokafka writes without idempotence)
    tail = _HEADER_TAIL.pack(0, count - 1, ts, ts, -1, -1, 0, count)
    body = b"".join([tail, *records])
    crc = crc32c_cython(body)
    prefix = _BATCH_PREFIX.pack(0, len(body) + _AFTER_CRC - _AFTER_LENGTH, -1, 2, crc)
    return PrebuiltBatch(prefix + body, count)
