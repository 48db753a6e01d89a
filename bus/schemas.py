"""The public contract, generated from the code: JSON Schemas and an AsyncAPI document.

- schemas/events/<ce_type>.json: JSON Schema (draft 2020-12) of the data of every
  event type, exactly what the relay publishes (bus.cloudevents.data_struct);
- schemas/commands/<Command>.json: JSON Schema of every command Struct;
- schemas/asyncapi.json: AsyncAPI 3.0.0 description of the Kafka topics, the
  CloudEvents headers and the dead-letter topics.

The files are checked in; tests/unit/test_schemas.py fails when they no longer
match the code. Regenerate with ``python -m bus.schemas``; ``--check`` only
lists the files that differ (exit status 1).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from bus.cloudevents import data_struct
from bus.naming import SPEC_VERSION, TYPE_PREFIX, EventType, all_event_types, dead_letter_topic
from bus.naming import topic_for as _topic_for
from engine.catalog import AGGREGATES
from engine.commands import HANDLERS, Command
from engine.settings import Settings

JSONSchema = dict[str, Any]

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = "schemas"
ASYNCAPI_PATH = f"{SCHEMA_DIR}/asyncapi.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
# Version of the contract document itself. Event and command shapes are
# versioned by their ce_type / name; bump this when topics or headers change.
CONTRACT_VERSION = "1.0.0"

UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _setting_default(name: str) -> Any:
    """A setting's default, independent of the environment of the generator."""
    for info in msgspec.structs.fields(Settings):
        if info.name == name:
            return info.default
    raise LookupError(f"engine.settings.Settings has no field {name!r}")


def default_prefix() -> str:
    return str(_setting_default("topic_prefix"))


def topic_for(aggregate: str) -> str:
    """The aggregate's topic under the default prefix (what the documents show)."""
    return _topic_for(default_prefix(), aggregate)


def command_types() -> list[type[Command]]:
    return sorted(HANDLERS, key=lambda cls: cls.__name__)


def command_path(cls: type[Command]) -> str:
    return f"{SCHEMA_DIR}/commands/{cls.__name__}.json"


# JSON Schema post-processing ------------------------------------------------------------


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
        options: list[JSONSchema] = node.get("anyOf", node.get("oneOf", []))
        for member in t.types:
            member = _unwrap(member)
            if not _has_datetime(member):
                continue
            if isinstance(member, mi.DateTimeType):
                if any(isinstance(_unwrap(m), mi.StrType) for m in t.types):
                    raise TypeError("cannot tell datetime from str in a union")
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


def _walk(node: Any) -> Iterator[JSONSchema]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def struct_schema(cls: type[msgspec.Struct]) -> JSONSchema:
    """msgspec's schema of cls with the root definition inlined and datetimes marked."""
    raw = msgspec.json.schema(cls)
    defs: dict[str, JSONSchema] = raw.get("$defs", {})
    _mark_datetimes(mi.type_info(cls), raw, defs, set())
    for definition in defs.values():
        if isinstance(definition.get("description"), str):
            definition["description"] = inspect.cleandoc(definition["description"])
    root_ref = raw["$ref"]
    root_name = root_ref.removeprefix("#/$defs/")
    schema = dict(defs[root_name])
    if not any(node.get("$ref") == root_ref for node in _walk(defs)):
        del defs[root_name]
    if defs:
        schema["$defs"] = defs
    return schema


# Event and command schemas ----------------------------------------------------------------


def event_schema(event_type: EventType) -> JSONSchema:
    schema = struct_schema(data_struct(event_type))
    # Forward compatibility: consumers must accept fields added later.
    for node in _walk(schema):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
    schema.update(
        {
            "$schema": DIALECT,
            "$id": event_type.ce_type,
            "title": event_type.ce_type,
            "description": (
                f"Data of the `{event_type.name}` event, version {event_type.version}, of "
                f"the `{event_type.aggregate}` aggregate: the JSON value of a record on "
                f"topic `<prefix>.{event_type.aggregate}.events` whose ce_type header is "
                f"`{event_type.ce_type}`. The record key and ce_subject are the aggregate "
                "id. Unknown fields must be ignored: the schema stays open so fields can "
                "be added."
            ),
        }
    )
    return schema


def command_schema(cls: type[Command]) -> JSONSchema:
    schema = struct_schema(cls)
    own_doc = cls.__dict__.get("__doc__")
    intro = inspect.cleandoc(own_doc) + "\n\n" if own_doc else ""
    schema.pop("description", None)
    schema.update(
        {
            "$schema": DIALECT,
            "$id": cls.__name__,
            "title": cls.__name__,
            "description": (
                f"{intro}The `{cls.__name__}` command (the name is its type). Unknown fields "
                "are rejected."
            ),
        }
    )
    return schema


# AsyncAPI -------------------------------------------------------------------------------------


def _header_schema() -> JSONSchema:
    def text(description: str, **extra: Any) -> JSONSchema:
        return {"type": "string", "description": description, **extra}

    source = _setting_default("event_source")
    properties: dict[str, JSONSchema] = {
        "ce_specversion": text("CloudEvents spec version.", const=SPEC_VERSION),
        "ce_id": text(
            "`<aggregate id>:<aggregate version>`: the same for every copy of one event, "
            "also when the relay publishes it again.",
            pattern=f"^{UUID_PATTERN}:[0-9]+$",
        ),
        "ce_source": text(
            f"CLOUD_ENGINE_EVENT_SOURCE (default `{source}`).", minLength=1, examples=[source]
        ),
        "ce_type": text(
            f"`{TYPE_PREFIX}.<aggregate>.<event>.v<version>`; selects the data schema.",
            pattern=rf"^{TYPE_PREFIX.replace('.', '[.]')}[.][a-z_]+[.][a-z_]+[.]v[0-9]+$",
        ),
        "ce_time": text("When the event was recorded (UTC).", format="date-time"),
        "ce_subject": text("The aggregate id; equal to the record key.", format="uuid"),
        "ce_dataschema": text(
            "Path of the data's JSON Schema in the cloud-engine repository: "
            "`schemas/events/<ce_type>.json`."
        ),
        "ce_position": text(
            "Global position of the event in the event store: gap-free, in commit order, "
            "unique per event. A decimal integer.",
            pattern="^[0-9]+$",
        ),
        "ce_aggregateversion": text(
            "Version of the aggregate after this event: 1 for its first event, then +1 per "
            "event. A decimal integer. Dedupe on (ce_subject, ce_aggregateversion).",
            pattern="^[0-9]+$",
        ),
        "ce_correlationid": text("Correlation id of the flow the event belongs to; may be empty."),
        "ce_causationid": text("Id of the message that caused the event; may be empty."),
        "ce_requestid": text("Id of the API request that caused the event; may be empty."),
        "ce_actor": text("Who sent the command that recorded the event."),
        "content-type": text("Media type of the record value.", const="application/json"),
    }
    return {
        "type": "object",
        "description": (
            "CloudEvents 1.0 Kafka protocol binding, binary content mode: every attribute "
            "is a record header whose value is a UTF-8 string; extension attributes are "
            "lower-case. Consumers must ignore headers they do not know."
        ),
        "properties": properties,
        "required": list(properties),
    }


def _message(event_type: EventType) -> JSONSchema:
    return {
        "name": event_type.ce_type,
        "title": f"{event_type.aggregate} {event_type.name} (v{event_type.version})",
        "summary": (
            f"The `{event_type.name}` event of a `{event_type.aggregate}` aggregate, "
            f"version {event_type.version}."
        ),
        "contentType": "application/json",
        "headers": {
            "allOf": [
                {"$ref": "#/components/schemas/CloudEventHeaders"},
                {
                    "type": "object",
                    "properties": {
                        "ce_type": {"const": event_type.ce_type},
                        "ce_dataschema": {"const": event_type.schema_path},
                    },
                },
            ]
        },
        "payload": {"$ref": event_type.schema_path.removeprefix(f"{SCHEMA_DIR}/")},
        "correlationId": {
            "description": "Correlation id of the flow the event belongs to.",
            "location": "$message.header#/ce_correlationid",
        },
        "bindings": {"kafka": {"$ref": "#/components/messageBindings/aggregateKey"}},
    }


def asyncapi() -> JSONSchema:
    prefix = default_prefix()
    partitions = _setting_default("topic_partitions")
    types = all_event_types()
    channels: dict[str, JSONSchema] = {}
    operations: dict[str, JSONSchema] = {}
    messages: dict[str, JSONSchema] = {}
    for aggregate in AGGREGATES:
        own = [t for t in types if t.aggregate == aggregate]
        for t in own:
            messages[t.ce_type] = _message(t)
        channels[aggregate] = {
            "address": topic_for(aggregate),
            "title": f"{aggregate} events",
            "description": (
                f"Every event of every `{aggregate}` aggregate, keyed by aggregate id, so "
                "one aggregate's events are in one partition in the order they were "
                f"recorded. Topic `<prefix>.{aggregate}.events` (CLOUD_ENGINE_TOPIC_PREFIX, "
                f"default `{prefix}`), created by the relay with CLOUD_ENGINE_TOPIC_PARTITIONS "
                f"partitions (default {partitions})."
            ),
            "messages": {t.ce_type: {"$ref": f"#/components/messages/{t.ce_type}"} for t in own},
            "bindings": {"kafka": {"partitions": partitions, "bindingVersion": KAFKA_BINDING_VERSION}},
        }
        operations[f"receive_{aggregate}"] = {
            "action": "receive",
            "title": f"Receive {aggregate} events",
            "channel": {"$ref": f"#/channels/{aggregate}"},
            "messages": [{"$ref": f"#/channels/{aggregate}/messages/{t.ce_type}"} for t in own],
        }
    channels["dead_letters"] = {
        "address": dead_letter_topic(prefix, "{group}"),
        "title": "Dead letters of one consumer group",
        "description": (
            "Records a consumer group could not process (undecodable, invalid or failing "
            "every retry) are copied here unchanged (same key, value and ce_* headers) "
            "with headers describing the error, and the group moves on. Topic "
            "`<prefix>.dlq.<group>`."
        ),
        "parameters": {"group": {"description": "The consumer group id."}},
        "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
    }
    operations["receive_dead_letters"] = {
        "action": "receive",
        "title": "Receive dead letters",
        "channel": {"$ref": "#/channels/dead_letters"},
        "messages": [{"$ref": "#/channels/dead_letters/messages/deadLetter"}],
    }
    messages["deadLetter"] = {
        "name": "deadLetter",
        "title": "Dead letter",
        "summary": "A record of an event topic that a consumer group gave up on.",
        "headers": {
            "type": "object",
            "description": (
                "The original record's headers (normally the CloudEvents headers of an event "
                "message) plus error headers added by the consumer."
            ),
        },
        "payload": {"description": "The original record value, unchanged."},
        "bindings": {"kafka": {"$ref": "#/components/messageBindings/aggregateKey"}},
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "cloud-engine events",
            "version": CONTRACT_VERSION,
            "description": (
                "Every event recorded by cloud-engine, published to Kafka by the relay as a "
                "CloudEvent (binary content mode) on its aggregate type's topic. Topic "
                f"names show the default prefix `{prefix}`; it is configurable with "
                "CLOUD_ENGINE_TOPIC_PREFIX. Delivery is at least once: dedupe on "
                "(ce_subject, ce_aggregateversion) or on ce_position, never on offsets. "
                "See docs/events.md."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"CloudEventHeaders": _header_schema()},
            "messages": messages,
            "messageBindings": {
                "aggregateKey": {
                    "key": {
                        "type": "string",
                        "format": "uuid",
                        "description": "The aggregate id (UTF-8), equal to ce_subject.",
                    },
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        },
    }


# Files ----------------------------------------------------------------------------------------


def _dump(document: JSONSchema) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def generate() -> dict[str, bytes]:
    """Every generated file: path relative to the repository root -> content."""
    files: dict[str, bytes] = {}
    for event_type in all_event_types():
        files[event_type.schema_path] = _dump(event_schema(event_type))
    for cls in command_types():
        files[command_path(cls)] = _dump(command_schema(cls))
    files[ASYNCAPI_PATH] = _dump(asyncapi())
    return dict(sorted(files.items()))


def _existing(root: Path) -> set[str]:
    """Generated-looking files under root/schemas (every *.json; README.md is not)."""
    base = root / SCHEMA_DIR
    if not base.is_dir():
        return set()
    return {p.relative_to(root).as_posix() for p in base.rglob("*.json") if p.is_file()}


def check(root: Path = ROOT) -> list[str]:
    """Files under root that differ from generate(), are missing or are left over."""
    files = generate()
    problems = []
    for path in sorted(set(files) | _existing(root)):
        target = root / path
        if path not in files:
            problems.append(f"{path} (not generated any more)")
        elif not target.is_file():
            problems.append(f"{path} (missing)")
        elif target.read_bytes() != files[path]:
            problems.append(f"{path} (differs)")
    return problems


def write(root: Path = ROOT) -> list[str]:
    """Write every generated file under root and remove stale ones; returns the changes."""
    files = generate()
    changed = []
    for path in sorted(_existing(root) - set(files)):
        (root / path).unlink()
        changed.append(path)
    for path, content in files.items():
        target = root / path
        if target.is_file() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bus.schemas", description="Generate schemas/ from the code."
    )
    parser.add_argument(
        "--check", action="store_true", help="only list files that differ; exit 1 if any"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for problem in problems:
            print(problem)
        if problems:
            print("schemas/ is out of date: run `python -m bus.schemas`", file=sys.stderr)
            return 1
        return 0
    changed = write(args.root)
    for path in changed:
        print(path)
    print(f"{len(changed)} file(s) changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
