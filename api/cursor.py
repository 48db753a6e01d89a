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
from datetime import datetime
from uuid import UUID

import msgspec

from api.problems import ApiError, bad_request


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    created_on: datetime
    id: UUID
    filters: str  # query_digest of the list's filters


_decoder = msgspec.json.Decoder(Cursor)
_encoder = msgspec.json.Encoder()


def query_digest(parts: list[tuple[str, object]]) -> str:
    text = "&".join(f"{name}={value}" for name, value in sorted(parts, key=lambda p: p[0]))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).rstrip(b"=").decode()


def decode_cursor(text: str, digest: str) -> Cursor:
    """The cursor a page handed out; 400 (field "cursor") for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise bad_request("cursor is not one this API handed out", field="cursor") from None
    if cursor.created_on.tzinfo is None:
        raise bad_request("cursor is not one this API handed out", field="cursor")
    if cursor.filters != digest:
        raise ApiError(
            400,
            "bad-request",
            "cursor belongs to a list with other filters; repeat the filters it was made with",
            field="cursor",
        )
    return cursor
