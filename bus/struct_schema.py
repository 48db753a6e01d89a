"""JSON Schema of a msgspec Struct, post-processed for the published contract.

msgspec.json.schema() is the starting point; struct_schema() then

- adds "format": "date-time" wherever the Struct has a datetime (msgspec emits a
  bare string; uuids already carry "format": "uuid");
- keeps only the summary paragraph of each Struct's docstring;
- inlines the root definition, so the schema describes the Struct itself;
- puts every description in one canonical form (normalise_descriptions).

bus.schemas builds the event and command schemas on top of this.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import msgspec
import msgspec.inspect as mi

JSONSchema = dict[str, Any]


def _unwrap(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _members(t: mi.Type) -> Iterator[mi.Type]:
    """The types directly inside t (fields, items, union members)."""
    t = _unwrap(t)
    if isinstance(t, mi.StructType):
        for f in t.fields:
            yield f.type
    elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        yield t.item_type
    elif isinstance(t, mi.TupleType):
        yield from t.item_types
    elif isinstance(t, mi.DictType):
        yield t.key_type
        yield t.value_type
    elif isinstance(t, mi.UnionType):
        yield from t.types


def _has_datetime(t: mi.Type, seen: frozenset[type[Any]] = frozenset()) -> bool:
    t = _unwrap(t)
    if isinstance(t, mi.DateTimeType):
        return True
    if isinstance(t, mi.StructType):
        if t.cls in seen:
            return False
        seen = seen | {t.cls}
    return any(_has_datetime(m, seen) for m in _members(t))


def _resolve(node: JSONSchema, defs: dict[str, JSONSchema]) -> JSONSchema:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return defs[ref.removeprefix("#/$defs/")]
    return node


def _mark_datetimes(
    t: mi.Type, node: JSONSchema, defs: dict[str, JSONSchema], done: set[type[Any]]
) -> None:
    """Add "format": "date-time" where t has a datetime (msgspec emits a bare string).

    Walks the msgspec type and its schema side by side; refuses shapes it cannot
    map unambiguously rather than guess.
    """
    t = _unwrap(t)
    if not _has_datetime(t):
        return
    node = _resolve(node, defs)
    if isinstance(t, mi.DateTimeType):
        if node.get("type") != "string":
            raise TypeError(f"unexpected schema for a datetime: {node}")
        node["format"] = "date-time"
    elif isinstance(t, mi.StructType):
        if t.cls in done:
            return
        done.add(t.cls)
        for f in t.fields:
            _mark_datetimes(f.type, node["properties"][f.encode_name], defs, done)
    elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        _mark_datetimes(t.item_type, node["items"], defs, done)
    elif isinstance(t, mi.TupleType):
        for item_type, item in zip(t.item_types, node["prefixItems"], strict=True):
            _mark_datetimes(item_type, item, defs, done)
    elif isinstance(t, mi.DictType):
        _mark_datetimes(t.value_type, node["additionalProperties"], defs, done)
    elif isinstance(t, mi.UnionType):
        options: list[JSONSchema] = node.get("anyOf") or node.get("oneOf") or []
        for member in t.types:
            member = _unwrap(member)
            if not _has_datetime(member):
                continue
            if isinstance(member, mi.DateTimeType):
                # msgspec allows one str-like type per union, so this is the one.
                matches = [o for o in options if o.get("type") == "string"]
            elif isinstance(member, mi.StructType):
                matches = [o for o in options if "$ref" in o]
            else:
                raise TypeError(f"cannot mark datetimes inside a union member {member}")
            if len(matches) != 1:
                raise TypeError(f"cannot locate union member {member} in {options}")
            _mark_datetimes(member, matches[0], defs, done)
    else:
        raise TypeError(f"cannot mark datetimes inside {t}")


def walk(node: Any) -> Iterator[JSONSchema]:
    """Every object (dict) in a JSON document, node itself first, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# Keywords whose values are data, not schemas: a "description" inside them is
# part of a value and is left as it is.
_DATA_KEYWORDS = frozenset({"const", "default", "enum", "example", "examples"})
# Keywords whose values map names (or status codes) to objects: every member
# is an object, even one named like a keyword (a field called "default" or
# "description", OpenAPI's "default" response). JSON Schema's, then
# OpenAPI's and AsyncAPI's.
_NAME_MAPS = frozenset(
    {
        *("properties", "patternProperties", "dependentSchemas", "$defs", "definitions"),
        *("paths", "schemas", "responses", "parameters", "headers", "links", "content"),
        *("channels", "operations", "messages"),
    }
)


def canonical_description(text: str) -> str:
    """One form for a description, whoever produced it.

    Docstrings reach the documents through libraries that format them their
    own way: msgspec up to 0.22 kept the indentation of a Struct docstring's
    later lines, 0.23 removes it, and Python 3.13 strips it at compile time.
    inspect.cleandoc undoes any of these (common indentation, tabs, leading
    and trailing blank lines); trailing spaces on a line go too. Line breaks
    and paragraphs stay as written.
    """
    return "\n".join(line.rstrip() for line in inspect.cleandoc(text).split("\n"))


def normalise_descriptions(document: Any, *, names: bool = False) -> None:
    """Put every "description" string in a JSON document (a JSON Schema, an
    OpenAPI or AsyncAPI document) in canonical form, in place. `names`: the
    document is a map of names to schemas (the value of "properties")."""
    if isinstance(document, dict):
        for key, value in document.items():
            if names:
                normalise_descriptions(value)
            elif key == "description" and isinstance(value, str):
                document[key] = canonical_description(value)
            elif key not in _DATA_KEYWORDS:
                normalise_descriptions(value, names=key in _NAME_MAPS)
    elif isinstance(document, list):
        for value in document:
            normalise_descriptions(value)


def struct_schema(cls: type[msgspec.Struct]) -> JSONSchema:
    """msgspec's schema of cls with the root definition inlined and datetimes marked."""
    raw = msgspec.json.schema(cls)
    defs: dict[str, JSONSchema] = raw.get("$defs", {})
    _mark_datetimes(mi.type_info(cls), raw, defs, set())
    normalise_descriptions(raw)
    for definition in defs.values():
        # A Struct's docstring: its summary paragraph only; the rest is for developers.
        if isinstance(definition.get("description"), str):
            definition["description"] = definition["description"].split("\n\n")[0]
    root_ref = raw["$ref"]
    root_name = root_ref.removeprefix("#/$defs/")
    schema = dict(defs[root_name])
    if not any(node.get("$ref") == root_ref for node in walk(defs)):
        del defs[root_name]
    if defs:
        schema["$defs"] = defs
    return schema
