"""The public contract, generated from the code: JSON Schemas and an AsyncAPI document.

- schemas/events/<ce_type>.json: JSON Schema (draft 2020-12) of the data of every
  event type, exactly what the relay publishes (bus.cloudevents.data_struct);
- schemas/commands/<Command>.json: JSON Schema of every published command Struct;
- schemas/asyncapi.json: AsyncAPI 3.0.0 description of the Kafka topics, the
  CloudEvents headers and the dead-letter topics.

The files are checked in; tests/unit/test_schemas.py fails when they no longer
match the code. Regenerate with ``python -m cloud_engine.bus.schemas``; ``--check`` only
lists the files that differ (exit status 1).

The JSON Schema of a Struct comes from bus.struct_schema, the AsyncAPI document
from bus.asyncapi; this module turns them into files.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_engine.bus.asyncapi import ASYNCAPI_PATH, asyncapi
from cloud_engine.bus.cloudevents import data_struct
from cloud_engine.bus.naming import EventType, all_event_types
from cloud_engine.bus.struct_schema import JSONSchema, struct_schema, walk
from cloud_engine.engine.commands import HANDLERS, Command

__all__ = [
    "ASYNCAPI_PATH",
    "DIALECT",
    "ROOT",
    "SCHEMA_DIR",
    "asyncapi",
    "check",
    "command_path",
    "command_schema",
    "command_types",
    "event_schema",
    "generate",
    "main",
    "struct_schema",
    "write",
]

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = "schemas"
# The OpenAPI document is api.openapi's (python -m cloud_engine.api.openapi; its own test).
OPENAPI_PATH = f"{SCHEMA_DIR}/openapi.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def command_types() -> list[type[Command]]:
    """The published commands (Command.published); the engine handles a few
    more that only its tests and benchmarks send."""
    return sorted((c for c in HANDLERS if c.published), key=lambda cls: cls.__name__)


def command_path(cls: type[Command]) -> str:
    return f"{SCHEMA_DIR}/commands/{cls.__name__}.json"


# Event and command schemas ----------------------------------------------------------------


def event_schema(event_type: EventType) -> JSONSchema:
    schema = struct_schema(data_struct(event_type))
    # Forward compatibility: consumers must accept fields added later.
    for node in walk(schema):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
    schema.update(
        {
            "$schema": DIALECT,
            "$id": event_type.schema_uri,
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
    found = {p.relative_to(root).as_posix() for p in base.rglob("*.json") if p.is_file()}
    return found - {OPENAPI_PATH}


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
        prog="python -m cloud_engine.bus.schemas", description="Generate schemas/ from the code."
    )
    parser.add_argument(
        "--check", action="store_true", help="only list files that differ; exit 1 if any"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="repository root (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for problem in problems:
            print(problem)
        if problems:
            print(
                "schemas/ is out of date: run `python -m cloud_engine.bus.schemas`", file=sys.stderr
            )
            return 1
        return 0
    changed = write(args.root)
    for path in changed:
        print(path)
    print(f"{len(changed)} file(s) changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
