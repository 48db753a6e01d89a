"""Opaque page cursors: the (created_on, id) of the last row of a page.

Keyset pagination over (created_on, id) stays fast at any depth and never
skips or repeats a row when rows are added meanwhile (new rows sort last).
The cursor is base64url JSON so clients treat it as a token; it also
carries a digest of the filters it was made with, because a cursor from one
query applied to another would silently page through the wrong list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from cloud_engine.api.problems import bad_request


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    created_on: datetime
    id: UUID
    filters: str  # query_digest of the list's filters


_decoder = msgspec.json.Decoder(Cursor)
_encoder = msgspec.json.Encoder()


def query_digest(parts: list[tuple[str, object]]) -> str:
    # JSON, not "name=value&...": a value holding "&state=x" must not give
    # the digest of two filters.
    pairs = sorted((name, str(value)) for name, value in parts)
    return hashlib.sha256(_encoder.encode(pairs)).hexdigest()[:12]


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).rstrip(b"=").decode()


def decode_cursor(text: str, digest: str) -> Cursor:
    """The cursor a page handed out; 400 (field "cursor") for anything else."""
    forged = bad_request("cursor is not one this API handed out", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _decoder.decode(raw)
        if cursor.created_on.tzinfo is None:
            raise forged
        # In UTC, so an edited offset that leaves datetime's range is a 400
        # here rather than a database error (a 500) later.
        created_on = cursor.created_on.astimezone(UTC)
    except (binascii.Error, ValueError, OverflowError, msgspec.DecodeError):
        raise forged from None
    if cursor.filters != digest:
        raise bad_request(
            "cursor belongs to a list with other filters; repeat the filters it was made with",
            field="cursor",
        )
    return msgspec.structs.replace(cursor, created_on=created_on)
