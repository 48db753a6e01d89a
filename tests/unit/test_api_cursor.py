"""Page cursors: opaque, round-trip exactly, refuse forgeries and cursors
of another filter set."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

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
