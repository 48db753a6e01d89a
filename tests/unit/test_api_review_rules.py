"""Regressions found reviewing api/, without HTTP or a database: field
patterns, account names and page cursors."""

from __future__ import annotations

import base64
import uuid

import msgspec
import pytest

from cloud_engine.api.auth import valid_account
from cloud_engine.api.cursor import decode_cursor, query_digest
from cloud_engine.api.fields import Address, Cidr, Description, Mac, Name, Tag, Url
from cloud_engine.api.problems import ApiError
from cloud_engine.api.resources import QUERY_TYPES


def test_account_names_have_no_trailing_newline() -> None:
    assert valid_account("alice")
    assert not valid_account("alice\n")


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (Address, "10.0.0.1", "10.0.0.1\n"),
        (Address, "10.0.0.1", "\u0661\u0660.0.0.1"),  # Arabic-Indic digits
        (Cidr, "10.0.0.0/24", "10.0.0.0/24\n"),
        (Mac, "02:AB:cd:00:00:01", "02:ab:cd:00:00:01\n"),
        (Name, "web 1", "web\u00001"),
        (Description, "two\nlines", "\u0000"),
        (Url, "file:///x", "file:///x\u0000"),
        (Tag, "ssd", "s\u0000d"),
    ],
)
def test_patterns(kind: object, good: str, bad: str) -> None:
    assert msgspec.convert(good, kind) == good
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, kind)


def test_text_filters_refuse_nul() -> None:
    query = QUERY_TYPES["vm"]
    assert msgspec.convert({"name": "web"}, query).name == "web"  # type: ignore[attr-defined]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "w\u0000"}, query)


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
