"""Errors as RFC 9457 problem documents (application/problem+json).

Every refusal the API gives goes through ApiError, so a client always gets
the same shape: type, title, status, detail, and, where one is to blame,
the field (a body path such as "spec.cpus", a query parameter or a header)
or the rule that failed. Nothing here knows about Starlette.
"""

from __future__ import annotations

import asyncio
import re

import asyncpg
import eventsourcing.persistence
import msgspec
import psycopg

from cloud_engine.engine.errors import Conflict, DomainError, NotFound, Validation

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:cloudengine:problem:"

TITLES: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A problem document (RFC 9457) with two extension members: field and rule."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    # The body path ("spec.cpus"), query parameter ("limit") or header
    # ("Idempotency-Key") that was refused.
    field: str | None = None
    # The engine's name for the rule that refused a command ("invalid-transition").
    rule: str | None = None
    request_id: str | None = None


class ApiError(Exception):
    """Raised anywhere below an endpoint; the app answers with its problem."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.rule = rule
        self.headers = headers or {}

    def problem(self, instance: str | None = None, request_id: str | None = None) -> Problem:
        return Problem(
            type=TYPE_PREFIX + self.code,
            title=TITLES.get(self.status, "Error"),
            status=self.status,
            detail=self.detail,
            instance=instance,
            field=self.field,
            rule=self.rule,
            request_id=request_id,
        )


def bad_request(detail: str, field: str | None = None) -> ApiError:
    return ApiError(400, "bad-request", detail, field=field)


def unauthorized(detail: str) -> ApiError:
    # RFC 6750: a bearer-protected resource names its scheme when refusing.
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def forbidden(detail: str, field: str | None = None) -> ApiError:
    return ApiError(403, "forbidden", detail, field=field)


def not_found(detail: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not-found", detail, field=field)


def unavailable(detail: str) -> ApiError:
    return ApiError(503, "unavailable", detail, headers={"Retry-After": "1"})


# Errors that mean a dependency is down, not that the request was wrong: 503.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.UndefinedTableError,
    # The event store (commands, and reads from the log: a resource not
    # projected yet, history).
    eventsourcing.persistence.InterfaceError,
    eventsourcing.persistence.OperationalError,
    psycopg.InterfaceError,
    psycopg.OperationalError,
)


# msgspec -------------------------------------------------------------------

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def field_of(message: str) -> tuple[str, str | None]:
    """Split a msgspec validation message into (message, field path).

    "Expected `int` >= 1 - at `$.spec.cpus`"     -> ("Expected `int` >= 1", "spec.cpus")
    "Object missing required field `name`"        -> (..., "name")
    "Object contains unknown field `z` - at `$.spec`" -> (..., "spec.z")
    """
    match = _AT.match(message)
    assert match is not None  # the pattern matches any text
    text = match.group("message")
    path = (match.group("path") or "").removeprefix(".")
    named = _NAMED.match(text)
    if named is not None:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return text, path or None


def invalid_body(error: msgspec.DecodeError) -> ApiError:
    """400 for bytes that are not JSON; 422 for JSON that breaks the schema."""
    if isinstance(error, msgspec.ValidationError):
        text, field = field_of(str(error))
        where = f" at {field}" if field else ""
        return ApiError(422, "invalid-body", f"{text}{where}", field=field)
    return ApiError(400, "malformed-json", f"request body is not valid JSON: {error}")


def invalid_query(error: msgspec.ValidationError) -> ApiError:
    text, field = field_of(str(error))
    where = f" in query parameter {field}" if field else ""
    return ApiError(400, "invalid-query", f"{text}{where}", field=field)


# Domain errors ---------------------------------------------------------------


def from_domain(error: DomainError) -> ApiError:
    """Validation -> 422, NotFound -> 404, every other refusal -> 409; a reused
    Idempotency-Key with another command -> 422 (the request cannot be replayed)."""
    if isinstance(error, Conflict) and error.field == "Idempotency-Key":
        return ApiError(422, "idempotency-key-reused", error.message, field=error.field)
    # InvalidTransition, CapacityExceeded, PlacementRefused, Conflict and any
    # refusal added later: the request was fine, the state said no.
    status = 409
    if isinstance(error, Validation):
        status = 422
    elif isinstance(error, NotFound):
        status = 404
    return ApiError(status, error.code, error.message, field=error.field, rule=error.code)
