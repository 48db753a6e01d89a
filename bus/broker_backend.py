"""Where the dev broker's S3 gateway keeps its objects: the seam between the
S3 protocol (bus.broker_s3) and a storage backend.

Two backends: PostgreSQL (bus.broker_backend_pg, the durable dev broker)
and process memory (bus.broker_backend_memory, the memory dev broker, which
forgets on a restart). Both serve Tansu's object store client through the
same protocol handling and the same retention (bus.broker_retention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# Keys sort by byte value, as S3 lists them (Tansu's offsets are
# zero-padded, so this is also offset order).


class PreconditionFailed(Exception):
    """A conditional write whose condition did not hold."""


class NoSuchKey(Exception):
    """A write conditional on an object that is not there."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    etag: str
    modified: datetime
    content_type: str | None
    size: int
    body: bytes  # b"" when only the metadata was asked for


@dataclass(frozen=True, slots=True)
class Entry:
    """One object in a listing."""

    key: str
    etag: str
    modified: datetime
    size: int


@dataclass(frozen=True, slots=True)
class RetentionRow:
    """A record batch (body None) or a group's committed offset (its body)."""

    bucket: str
    key: str
    modified: datetime
    body: bytes | None


class Backend(Protocol):
    """The object operations the S3 gateway needs.

    A write's `match` is None (unconditional), "*" after If-None-Match: *
    (create only: PreconditionFailed when present) or the ETag an If-Match
    named (update only that version: PreconditionFailed when another,
    NoSuchKey when absent). Every write returns the new ETag."""

    async def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        content_type: str | None,
        *,
        create: bool = False,
        match: str | None = None,
    ) -> str: ...

    async def get(self, bucket: str, key: str, *, head: bool = False) -> StoredObject | None: ...

    async def copy(self, source: tuple[str, str], bucket: str, key: str) -> str | None:
        """The new ETag, or None when the source is not there."""
        ...

    async def delete(self, bucket: str, keys: Sequence[str]) -> None: ...

    async def list_xml(self, bucket: str, prefix: str, after: str) -> tuple[int, str]:
        """The objects whose key starts with prefix and sorts after `after`,
        in key order, as ListObjectsV2 <Contents> elements (built where it is
        cheapest: Tansu lists a partition's batches on every fetch behind the
        end), and how many."""
        ...

    async def list_entries(self, bucket: str, prefix: str, after: str) -> list[Entry]:
        """The same objects, as entries (for a listing with a delimiter)."""
        ...

    async def retention_rows(self) -> tuple[datetime, list[RetentionRow]]:
        """The backend's clock now (it stamped `modified`) and every record
        batch and committed offset object."""
        ...


def successor(prefix: str) -> str | None:
    """The least string above every string that starts with prefix (None:
    no bound), in the keys' byte order."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None
