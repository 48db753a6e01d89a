"""Generated documents do not depend on how a library formats docstrings.

msgspec up to 0.22 kept the indentation of a Struct docstring's later lines
in the JSON Schema description, 0.23 removes it (Python 3.13 strips it at
compile time): the checked-in OpenAPI document, JSON Schemas and AsyncAPI
document must come out the same either way.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from cloud_engine.api.openapi import build_document
from cloud_engine.bus import schemas
from cloud_engine.bus.struct_schema import (
    canonical_description,
    normalise_descriptions,
    struct_schema,
)


def _reindent(document: Any, margin: str) -> Any:
    """Indent every later line of every description by `margin`, as msgspec
    0.22 left a class body's docstring."""
    if isinstance(document, dict):
        return {
            k: (
                v.replace("\n", "\n" + margin)
                if k == "description" and isinstance(v, str)
                else _reindent(v, margin)
            )
            for k, v in document.items()
        }
    if isinstance(document, list):
        return [_reindent(v, margin) for v in document]
    return document


@pytest.mark.parametrize("margin", ["    ", "  ", "\t"])
def test_openapi_document_is_the_same_whatever_msgspec_does_to_docstrings(
    monkeypatch: pytest.MonkeyPatch, margin: str
) -> None:
    plain = json.dumps(build_document(), indent=2)
    original = msgspec.json.schema_components
    changed: list[bool] = []

    def indenting(*args: Any, **kwargs: Any) -> Any:
        out, components = original(*args, **kwargs)
        indented = _reindent(components, margin)
        changed.append(indented != components)
        return out, indented

    monkeypatch.setattr(msgspec.json, "schema_components", indenting)
    assert json.dumps(build_document(), indent=2) == plain
    assert changed == [True], "no multi-line docstring reached the document: test proves nothing"


@pytest.mark.parametrize("margin", ["    ", "  ", "\t"])
def test_json_schemas_and_asyncapi_are_the_same_whatever_msgspec_does(
    monkeypatch: pytest.MonkeyPatch, margin: str
) -> None:
    plain = schemas.generate()
    original = msgspec.json.schema
    changed: list[bool] = []

    def indenting(*args: Any, **kwargs: Any) -> Any:
        schema = original(*args, **kwargs)
        indented = _reindent(schema, margin)
        changed.append(indented != schema)
        return indented

    monkeypatch.setattr(msgspec.json, "schema", indenting)
    assert schemas.generate() == plain
    assert any(changed), "no multi-line docstring reached a schema: test proves nothing"


class _Four(msgspec.Struct):
    """First line.

    Second paragraph, indented
    like a class body.
    """

    a: int


class _Two(msgspec.Struct):
    a: int


# The same text with another margin and a trailing space, as a code
# generator or another Python version might leave it.
_Two.__doc__ = "First line.\n\n  Second paragraph, indented \n  like a class body.\n  "


def test_a_docstring_indented_two_ways_gives_one_schema() -> None:
    four = msgspec.json.schema_components([_Four])[1]["_Four"]
    two = msgspec.json.schema_components([_Two])[1]["_Two"]
    normalise_descriptions(four)
    normalise_descriptions(two)
    assert four["description"] == two["description"]
    assert four["description"] == "First line.\n\nSecond paragraph, indented\nlike a class body."
    # The event and command schemas keep the summary paragraph only.
    summaries = {struct_schema(_Four)["description"], struct_schema(_Two)["description"]}
    assert summaries == {"First line."}


def test_values_are_not_descriptions() -> None:
    document = {
        "properties": {
            "description": {"type": "string", "description": "  Indented\n    text"},
            "default": {"description": " x"},
        },
        "default": {"description": "  kept as sent"},
        "examples": [{"description": "  kept too"}],
    }
    normalise_descriptions(document)
    assert document == {
        "properties": {
            "description": {"type": "string", "description": "Indented\ntext"},
            "default": {"description": "x"},
        },
        "default": {"description": "  kept as sent"},
        "examples": [{"description": "  kept too"}],
    }


def test_canonical_form_is_stable() -> None:
    once = canonical_description("\n    A\n\n      b \n    c\n")
    assert once == "A\n\n  b\nc"
    assert canonical_description(once) == once
