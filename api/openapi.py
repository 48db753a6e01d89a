"""The OpenAPI 3.1 document, generated from the route table and the
contract's msgspec types, so it cannot drift from what the API does.

Served at /openapi.json and checked in as schemas/openapi.json (a test
fails when the two differ). Regenerate after changing a route or a body:

    python -m cloud_engine.api.openapi            # writes schemas/openapi.json
"""

from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import msgspec

from cloud_engine.api import quota_routes, token_routes
from cloud_engine.api.problems import MEDIA_TYPE, Problem
from cloud_engine.api.resources import (
    BY_TYPE,
    QUERY_TYPES,
    TYPES,
    EventQuery,
    ResourceType,
    StateQuery,
)
from cloud_engine.api.route_table import COMMAND_ROUTES
from cloud_engine.api.routing import CommandRoute
from cloud_engine.api.views import CommandAccepted, EventPage, Health, ResourcePage
from cloud_engine.bus.struct_schema import normalise_descriptions
from cloud_engine.projections.history import StateView

CHECKED_IN = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"
REF = "#/components/schemas/{name}"

DESCRIPTION = """\
HTTP API of cloud-engine. Commands answer 202 with a CommandAccepted body and a
Location: the operation to poll when the command started one (VM deploy and
lifecycle), else the resource. Every command honours an Idempotency-Key header.
Errors are application/problem+json (RFC 9457) naming the field or rule that failed.
Authenticate with `Authorization: Bearer <token>` (`cloud-engine token create`).
See docs/api.md."""

IDEMPOTENCY_KEY_RULES = """\
1 to 255 printable ASCII characters (`!` to `~`: no spaces, no control
characters), or the same within double quotes (an RFC 8941 string, `"web-1"`:
the key is what is inside); anything else is a 400 naming the header. Same key
and body: the first answer again (replayed=true); same key, other body: 422.
Scoped to the token."""
# What api.context.idempotency_key accepts (a test holds the two together):
# the bare key, or one in quotes; `""` would be an empty key in quotes.
IDEMPOTENCY_KEY_SCHEMA = {
    "type": "string",
    "pattern": '^(?:[!-~]{1,255}|"[!-~]{1,255}")$(?!\\n)',
    "not": {"const": '""'},
}

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


def _camel(resource_type: str) -> str:
    return "".join(p.capitalize() for p in resource_type.split("_"))


_BY_RESOURCE = "$response.body#/resource_id"


def _links(route: CommandRoute[Any]) -> dict[str, Any]:
    """Where a client goes from a command's 202: its operation, the resource
    it created or acted on, that resource's history and operations, and every
    action on it, each with the id from the answer (OpenAPI links, which
    stateful clients and fuzzers follow)."""
    resource = BY_TYPE[route.resource]
    camel = _camel(resource.type)
    links: dict[str, Any] = {}
    if route.operation:
        by_operation = {"id": "$response.body#/operation_id"}
        links["operation"] = {
            "operationId": "getOperation",
            "parameters": by_operation,
            "description": "The operation the command started: poll it until it is succeeded,"
            " failed or compensated.",
        }
        links["operationEvents"] = {
            "operationId": "getOperationEvents",
            "parameters": by_operation,
            "description": "The operation's events: its steps as they happen.",
        }
    links["resource"] = {
        "operationId": f"get{camel}",
        "parameters": {"id": _BY_RESOURCE},
        "description": f"The {resource.title} the command created or acted on.",
    }
    links["resourceEvents"] = {
        "operationId": f"get{camel}Events",
        "parameters": {"id": _BY_RESOURCE},
        "description": f"The {resource.title}'s events.",
    }
    links["resourceOperations"] = {
        "operationId": "listOperations",
        "parameters": {"query.resource_id": _BY_RESOURCE},
        "description": f"The operations on the {resource.title}.",
    }
    for other in COMMAND_ROUTES:
        if other.target == route.resource:
            links[other.name] = {
                "operationId": other.name,
                "parameters": {"id": _BY_RESOURCE},
                "description": f"{other.summary}: this one.",
            }
    return links


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
                "links": _links(route),
            },
            **_problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
        },
    }


_QUERY_NOTES = {
    "limit": "Page size.",
    "cursor": "next_cursor of the previous page, with the same filters; a value this API"
    " did not hand out is a 400.",
    "after_version": "Events after this version (next_after_version of the previous page).",
}


def _not_none(kind: Any) -> Any:
    """`X | None` -> X: a query parameter is optional by being left out."""
    if get_origin(kind) in (Union, types.UnionType):
        rest = [a for a in get_args(kind) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
    return kind


def _query(kind: type[msgspec.Struct], title: str = "item") -> list[dict[str, Any]]:
    """The query parameters of a read, from the Struct the server decodes
    them into: the document states exactly the limits the server checks."""
    parameters = []
    for field in msgspec.structs.fields(kind):
        schema = msgspec.json.schema(_not_none(field.type))
        if field.default is not None and field.default is not msgspec.NODEFAULT:
            schema["default"] = field.default
        filters = f"Only the {title}s whose {field.name} is this value (exact match)."
        note = _QUERY_NOTES.get(field.name, filters)
        parameters.append(
            {"name": field.encode_name, "in": "query", "schema": schema, "description": note}
        )
    return parameters


def _reads(resource: ResourceType) -> dict[str, dict[str, Any]]:
    camel = _camel(resource.type)
    base = f"/v1/{resource.collection}"
    access = ACCESS[resource.access]
    return {
        base: {
            "get": {
                "operationId": f"list{camel}s",
                "summary": f"List {resource.title}s, oldest first",
                "description": access,
                "tags": [resource.type],
                "parameters": _query(QUERY_TYPES[resource.type], resource.title),
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
                "parameters": [_ID, *_query(EventQuery)],
                "responses": {"200": {"description": "Its history", "content": _json("EventPage")},
                              **_problems(400, 401, 403, 404, 503)},
            }
        },
        f"{base}/{{id}}/state": {
            "get": {
                "operationId": f"get{camel}State",
                "summary": f"One {resource.title} as it was after a version or at a time,"
                           " rebuilt from the log",
                "description": access,
                "tags": [resource.type],
                "parameters": [_ID, *_query(StateQuery)],
                "responses": {"200": {"description": "Its state then",
                                      "content": _json("StateView")},
                              **_problems(400, 401, 403, 404, 422, 503)},
            }
        },
    }  # fmt: skip


STREAM = {
    "get": {
        "operationId": "streamEvents",
        "summary": "Live events (server-sent events) fed from Kafka",
        "description": "Every event as it is published, from now on: an administrator's"
        " stream has all of them, a user's only its own account's resources'. Each"
        " message is `event: cloudevent`, `id: <ce_id>` and one JSON data line (see"
        " docs/api.md). 503 when this API process has no broker.",
        "tags": ["service"],
        "responses": {
            "200": {
                "description": "An endless text/event-stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_problems(401, 503),
        },
    }
}


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


def _token_paths() -> dict[str, dict[str, Any]]:
    admin = "Administrators only. Tokens are not engine commands: no Idempotency-Key."
    revoke = (
        "Revoke a token: every API process refuses it within half a second (a second"
        " revoke keeps the first time)"
    )
    return {
        "/v1/tokens": {
            "get": {
                "operationId": "listTokens",
                "summary": "List tokens, oldest first, without their secrets",
                "description": admin,
                "tags": ["token"],
                "parameters": _query(token_routes.TokenQuery, "token"),
                "responses": {"200": {"description": "The tokens", "content": _json("TokenPage")},
                              **_problems(400, 401, 403, 503)},
            },
            "post": {
                "operationId": "createToken",
                "summary": "Create a token; its secret is in the answer, once",
                "description": admin,
                "tags": ["token"],
                "requestBody": {"required": True, "content": _json("TokenCreate")},
                "responses": {"201": {"description": "Created", "content": _json("TokenCreated"),
                                      "headers": {"Location": {"schema": {"type": "string"}}}},
                              **_problems(400, 401, 403, 413, 415, 422, 503)},
            },
        },
        "/v1/tokens/{id}": {
            "get": {
                "operationId": "getToken",
                "summary": "One token, without its secret",
                "description": admin,
                "tags": ["token"],
                "parameters": [_ID],
                "responses": {"200": {"description": "The token", "content": _json("Token")},
                              **_problems(401, 403, 404, 503)},
            }
        },
        "/v1/tokens/{id}/revoke": {
            "post": {
                "operationId": "revokeToken",
                "summary": revoke,
                "description": admin,
                "tags": ["token"],
                "parameters": [_ID],
                "responses": {"200": {"description": "The revoked token",
                                      "content": _json("Token")},
                              **_problems(401, 403, 404, 503)},
            }
        },
    }  # fmt: skip


def _quota_paths() -> dict[str, dict[str, Any]]:
    return {
        "/v1/quotas": {
            "get": {
                "operationId": "getQuotas",
                "summary": "An account's limits and current usage (your own; admins any)",
                "description": "Users read their own account's; administrators any (?account=).",
                "tags": ["quota"],
                "parameters": _query(quota_routes.QuotaQuery, "quota"),
                "responses": {"200": {"description": "Limits and usage",
                                      "content": _json("QuotaPage")},
                              **_problems(400, 401, 403, 503)},
            },
            "post": {
                "operationId": "setQuotas",
                "summary": "Set or lift an account's limits (vms, vcpus, ram_mb, volume_gb,"
                " public_ips); a command past one is refused 409 quota-exceeded",
                "description": ACCESS["fabric"],
                "tags": ["quota"],
                "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
                "requestBody": {"required": True, "content": _json("QuotaSet")},
                "responses": {"202": {"description": "Recorded",
                                      "headers": {"Location": {"schema": {"type": "string"}}},
                                      "content": _json("CommandAccepted")},
                              **_problems(400, 401, 403, 409, 413, 415, 422, 503)},
            },
        }
    }  # fmt: skip


def build_document() -> dict[str, Any]:
    bodies = list(dict.fromkeys(r.body for r in COMMAND_ROUTES))
    outputs = [
        CommandAccepted, ResourcePage, EventPage, StateView, Health, Problem,
        *token_routes.BODIES, *quota_routes.BODIES,
    ]  # fmt: skip
    _, schemas = msgspec.json.schema_components([*bodies, *outputs], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for resource in TYPES:
        for path, item in _reads(resource).items():
            paths.setdefault(path, {}).update(item)
    for route in COMMAND_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _command(route)
    paths.update(_token_paths())
    paths.update(_quota_paths())
    paths["/livez"] = _plain("The process is alive", _json("Health"))
    paths["/readyz"] = _plain("The database answers", _json("Health"), 503)
    paths["/metrics"] = _plain("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}})
    paths["/v1/stream"] = STREAM
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
                    "description": IDEMPOTENCY_KEY_RULES,
                    "schema": IDEMPOTENCY_KEY_SCHEMA,
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
