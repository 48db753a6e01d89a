"""The OpenAPI 3.1 document, generated from the route table and the
contract's msgspec types, so it cannot drift from what the API does.

Served at /openapi.json and checked in as schemas/openapi.json (a test
fails when the two differ). Regenerate after changing a route or a body:

    python -m api.openapi            # writes schemas/openapi.json
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from api.problems import MEDIA_TYPE, Problem
from api.resources import DEFAULT_LIMIT, MAX_LIMIT, TYPES, ResourceType
from api.route_table import COMMAND_ROUTES
from api.routing import CommandRoute
from api.views import CommandAccepted, EventPage, Health, ResourcePage
from bus.struct_schema import normalise_descriptions

CHECKED_IN = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"
REF = "#/components/schemas/{name}"

DESCRIPTION = """\
HTTP API of cloud-engine. Commands answer 202 with a CommandAccepted body and a
Location: the operation to poll when the command started one (VM deploy and
lifecycle), else the resource. Every command honours an Idempotency-Key header.
Errors are application/problem+json (RFC 9457) naming the field or rule that failed.
Authenticate with `Authorization: Bearer <token>` (`cloud-engine token create`).
See docs/api.md."""

ACCESS = {
    "fabric": "Administrators only.",
    "catalog": "Everyone reads; administrators change.",
    "tenant": "Users see and change their own account's resources; administrators all.",
}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": "#/components/responses/Problem"} for s in statuses}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(name=name)}}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def _command(route: CommandRoute[Any]) -> dict[str, Any]:
    body_required = any(f.required for f in msgspec.structs.fields(route.body))
    parameters: list[dict[str, Any]] = [{"$ref": "#/components/parameters/IdempotencyKey"}]
    if route.target is not None:
        parameters.insert(0, _ID)
    where = "the operation" if route.operation else "the resource"
    return {
        "operationId": route.name,
        "summary": route.summary,
        "description": ACCESS[route.access],
        "tags": [route.resource],
        "parameters": parameters,
        "requestBody": {"required": body_required, "content": _json(route.body.__name__)},
        "responses": {
            "202": {
                "description": f"Recorded; Location names {where}.",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": _json("CommandAccepted"),
            },
            **_problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
        },
    }


def _filter_schema(kind: str) -> dict[str, Any]:
    return {"type": "string", "format": "uuid"} if kind == "uuid" else {"type": "string"}


def _reads(resource: ResourceType) -> dict[str, dict[str, Any]]:
    camel = "".join(p.capitalize() for p in resource.type.split("_"))
    base = f"/v1/{resource.collection}"
    query = [
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                    "default": DEFAULT_LIMIT}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"},
         "description": "next_cursor of the previous page (same filters)"},
        *({"name": f.name, "in": "query", "schema": _filter_schema(f.kind)}
          for f in resource.filters),
    ]  # fmt: skip
    access = ACCESS[resource.access]
    return {
        base: {
            "get": {
                "operationId": f"list{camel}s",
                "summary": f"List {resource.title}s, oldest first",
                "description": access,
                "tags": [resource.type],
                "parameters": query,
                "responses": {"200": {"description": "A page", "content": _json("ResourcePage")},
                              **_problems(400, 401, 403, 503)},
            }
        },
        f"{base}/{{id}}": {
            "get": {
                "operationId": f"get{camel}",
                "summary": f"One {resource.title}",
                "description": access,
                "tags": [resource.type],
                "parameters": [_ID],
                "responses": {"200": {"description": "The resource", "content": _json("Resource")},
                              **_problems(401, 403, 404, 503)},
            }
        },
        f"{base}/{{id}}/events": {
            "get": {
                "operationId": f"get{camel}Events",
                "summary": f"The events of one {resource.title}, from the log, oldest first",
                "description": access,
                "tags": [resource.type],
                "parameters": [
                    _ID,
                    {"name": "after_version", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "default": 0},
                     "description": "events after this version (next_after_version"
                                    " of the previous page)"},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                "default": MAX_LIMIT}},
                ],
                "responses": {"200": {"description": "Its history", "content": _json("EventPage")},
                              **_problems(401, 403, 404, 503)},
            }
        },
    }  # fmt: skip


def _plain(summary: str, content: dict[str, Any], *problems: int) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [],
            "tags": ["service"],
            "responses": {"200": {"description": summary, "content": content},
                          **_problems(*problems)},
        }
    }  # fmt: skip


def build_document() -> dict[str, Any]:
    bodies = list(dict.fromkeys(r.body for r in COMMAND_ROUTES))
    outputs = [CommandAccepted, ResourcePage, EventPage, Health, Problem]
    _, schemas = msgspec.json.schema_components([*bodies, *outputs], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for resource in TYPES:
        for path, item in _reads(resource).items():
            paths.setdefault(path, {}).update(item)
    for route in COMMAND_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _command(route)
    paths["/livez"] = _plain("The process is alive", _json("Health"))
    paths["/readyz"] = _plain("The database answers", _json("Health"), 503)
    paths["/metrics"] = _plain("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}})
    paths["/openapi.json"] = _plain("This document", {"application/json": {"schema": {}}})
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "cloud-engine", "version": "1", "description": DESCRIPTION},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Same key and body: the first answer again (replayed=true);"
                    " same key, other body: 422. Scoped to the token.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            },
            "responses": {
                "Problem": {
                    "description": "A problem document (RFC 9457)",
                    "content": {MEDIA_TYPE: {"schema": {"$ref": REF.format(name="Problem")}}},
                }
            },
        },
    }
    # The Structs' docstrings come through msgspec, whose formatting of them
    # changes between versions (0.23 stopped keeping their indentation): one
    # canonical form keeps the checked-in document the same under any.
    normalise_descriptions(document)
    return document


@functools.cache
def document_bytes() -> bytes:
    return (json.dumps(build_document(), indent=2) + "\n").encode()


def main() -> int:
    CHECKED_IN.write_bytes(document_bytes())
    print(f"wrote {CHECKED_IN}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
