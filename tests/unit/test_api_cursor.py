"""Page cursors: opaque, round-trip exactly, refuse forgeries, cursors of
another filter set and times out of range, and give their time back in
UTC."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_engine.api.cursor import Cursor, decode_cursor, encode_cursor, query_digest
from cloud_engine.api.problems import ApiError

MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(MOMENTS, st.uuids())
def test_round_trip(moment: datetime, ident: uuid.UUID) -> None:
    digest = query_digest([("state", "Running")])
    text = encode_cursor(Cursor(moment, ident, digest))
    assert text.isascii() and "=" not in text and "/" not in text and "+" not in text
    back = decode_cursor(text, digest)
    assert back.created_on == moment and back.id == ident


def test_digest_ignores_order_but_not_values() -> None:
    a = query_digest([("state", "Running"), ("zone_id", "z")])
    assert a == query_digest([("zone_id", "z"), ("state", "Running")])
    assert a != query_digest([("state", "Stopped"), ("zone_id", "z")])
    assert a != query_digest([])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 !!",
        base64.urlsafe_b64encode(b"nope").decode(),
        base64.urlsafe_b64encode(b'["2020-01-01T00:00:00Z","x","d"]').decode(),
        base64.urlsafe_b64encode(b'["2020-01-01T00:00:00",'
                                 b'"6f1c0a8e-3d2b-4f5e-9a7c-1b2d3e4f5a6b","d"]').decode(),
    ],
)  # fmt: skip
def test_forged_cursors_are_400(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_cursor(text, "d")
    assert (caught.value.status, caught.value.field) == (400, "cursor")


def test_cursor_of_other_filters_is_400() -> None:
    text = encode_cursor(Cursor(datetime.now(UTC), uuid.uuid4(), query_digest([("a", 1)])))
    with pytest.raises(ApiError) as caught:
        decode_cursor(text, query_digest([("a", 2)]))
    assert caught.value.field == "cursor"
    assert "other filters" in caught.value.detail


def test_digest_cannot_be_spoofed_by_a_value() -> None:
    assert query_digest([("name", "a&state=b")]) != query_digest([("name", "a"), ("state", "b")])


def _cursor(stamp: str, digest: str) -> str:
    raw = msgspec.json.encode([stamp, str(uuid.uuid4()), digest])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
def test_cursor_out_of_range_once_in_utc_is_400(stamp: str) -> None:
    digest = query_digest([])
    with pytest.raises(ApiError) as caught:
        decode_cursor(_cursor(stamp, digest), digest)
    assert (caught.value.status, caught.value.field) == (400, "cursor")


def test_cursor_time_is_given_back_in_utc() -> None:
    digest = query_digest([])
    back = decode_cursor(_cursor("2020-01-01T05:00:00+05:00", digest), digest)
    assert back.created_on.utcoffset() is not None
    assert back.created_on.isoformat() == "2020-01-01T00:00:00+00:00"
