"""The field types of the contract (api/fields.py) and the text filters of
the lists: what their patterns take and refuse (a trailing newline, NUL,
digits of other scripts)."""

from __future__ import annotations

import msgspec
import pytest

from cloud_engine.api.fields import Address, Cidr, Description, Mac, Name, Tag, Url
from cloud_engine.api.resources import QUERY_TYPES


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
