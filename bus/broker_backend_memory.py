"""The memory dev broker's objects: in this process, gone when it stops.

Why not Tansu's own memory:// engine: it never deletes a record batch
(delete_records is todo!() in v0.6.0) and lists a partition's whole history
on every fetch behind the end and every ListOffsets, so the broker's CPU
grows with everything ever produced. Served through the same S3 gateway as
the durable store, the batches are bounded by the same retention
(bus.broker_retention).

Per bucket, a dict of the objects and their keys in sorted order (S3 lists
in key order); each object keeps its listing entry built once, so a listing
is a range of the sorted keys and a join.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape

from cloud_engine.bus.broker_backend import (
    Entry,
    NoSuchKey,
    PreconditionFailed,
    RetentionRow,
    StoredObject,
    successor,
)
from cloud_engine.bus.broker_s3 import iso

UNAVAILABLE: tuple[type[BaseException], ...] = ()  # nothing to wait for
_TICK = timedelta(microseconds=1)


@dataclass(slots=True)
class _Object:
    etag: str
    modified: datetime
    content_type: str | None
    body: bytes
    listed: str  # its <Contents> element


@dataclass(slots=True)
class _Bucket:
    objects: dict[str, _Object] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # sorted

    def span(self, prefix: str, after: str) -> list[str]:
        """The keys with prefix, above after, in order."""
        keys = self.keys
        start = (
            bisect.bisect_right(keys, after)
            if after >= prefix
            else bisect.bisect_left(keys, prefix)
        )
        bound = successor(prefix)
        end = len(keys) if bound is None else bisect.bisect_left(keys, bound, start)
        return keys[start:end]


class MemoryBackend:
    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._etags = itertools.count(1)
        self._last = datetime.now(UTC)

    def _now(self) -> datetime:
        """Strictly increasing: Tansu takes a partition's latest batch to be
        the one listed with the newest LastModified."""
        now = datetime.now(UTC)
        self._last = now if now > self._last else self._last + _TICK
        return self._last

    def _store(self, bucket: str, key: str, body: bytes, content_type: str | None) -> str:
        etag = f"{next(self._etags):x}"
        modified = self._now()
        listed = (
            f"<Contents><Key>{escape(key)}</Key><LastModified>{iso(modified)}</LastModified>"
            f'<ETag>"{etag}"</ETag><Size>{len(body)}</Size></Contents>'
        )
        b = self._buckets.setdefault(bucket, _Bucket())
        if key not in b.objects:
            bisect.insort(b.keys, key)
        b.objects[key] = _Object(etag, modified, content_type, body, listed)
        return etag

    async def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        content_type: str | None,
        *,
        create: bool = False,
        match: str | None = None,
    ) -> str:
        # No await before the write: a check and its write are one step of
        # the event loop, so conditional writes cannot interleave.
        found = self._buckets.get(bucket, _Bucket()).objects.get(key)
        if create and found is not None:
            raise PreconditionFailed(key)
        if match is not None:
            if found is None:
                raise NoSuchKey(key)
            if match not in ("*", found.etag):
                raise PreconditionFailed(key)
        return self._store(bucket, key, body, content_type)

    async def get(self, bucket: str, key: str, *, head: bool = False) -> StoredObject | None:
        found = self._buckets.get(bucket, _Bucket()).objects.get(key)
        if found is None:
            return None
        body = b"" if head else found.body
        return StoredObject(found.etag, found.modified, found.content_type, len(found.body), body)

    async def copy(self, source: tuple[str, str], bucket: str, key: str) -> str | None:
        found = self._buckets.get(source[0], _Bucket()).objects.get(source[1])
        if found is None:
            return None
        return self._store(bucket, key, found.body, found.content_type)

    async def delete(self, bucket: str, keys: Sequence[str]) -> None:
        b = self._buckets.get(bucket)
        if b is None:
            return
        gone = {k for k in keys if b.objects.pop(k, None) is not None}
        if len(gone) == 1:
            (key,) = gone
            del b.keys[bisect.bisect_left(b.keys, key)]
        elif gone:
            b.keys = [k for k in b.keys if k not in gone]

    async def list_xml(self, bucket: str, prefix: str, after: str) -> tuple[int, str]:
        b = self._buckets.get(bucket)
        if b is None:
            return 0, ""
        keys = b.span(prefix, after)
        objects = b.objects
        return len(keys), "".join([objects[k].listed for k in keys])

    async def list_entries(self, bucket: str, prefix: str, after: str) -> list[Entry]:
        b = self._buckets.get(bucket)
        if b is None:
            return []
        found = [(k, b.objects[k]) for k in b.span(prefix, after)]
        return [Entry(k, o.etag, o.modified, len(o.body)) for k, o in found]

    async def retention_rows(self) -> tuple[datetime, list[RetentionRow]]:
        rows: list[RetentionRow] = []
        for name, b in self._buckets.items():
            for key, o in b.objects.items():
                if not key.startswith("clusters/"):
                    continue
                if "/records/" in key and key.endswith(".batch"):
                    rows.append(RetentionRow(name, key, o.modified, None))
                elif "/groups/consumers/" in key and "/offsets/" in key and key.endswith(".json"):
                    rows.append(RetentionRow(name, key, o.modified, o.body))
        return datetime.now(UTC), rows
