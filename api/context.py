"""What every endpoint works with, built once per app in its lifespan."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import asyncpg
from starlette.datastructures import Headers
from starlette.requests import Request

from cloud_engine.api.auth import Principal, bearer_token
from cloud_engine.api.metrics import ApiMetrics
from cloud_engine.api.owners import Owners
from cloud_engine.api.problems import bad_request, unauthorized, unavailable
from cloud_engine.api.tokens import TokenStore
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore

if TYPE_CHECKING:
    from cloud_engine.api.live import LiveFeed

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass
class ApiContext:
    service: CommandService
    store: EventStore
    schema: str
    pool: asyncpg.Pool
    tokens: TokenStore
    owners: Owners
    metrics: ApiMetrics
    # How long a command may wait for the writer before the client is told
    # to retry (with its Idempotency-Key, which makes that safe).
    command_timeout: float = 30.0
    # Commands this process has submitted and not seen answered. Past the
    # limit a command is refused at once (503, Retry-After) rather than
    # queued behind minutes of work its client will have given up on.
    max_pending: int = 2000
    pending: int = 0
    # The live event stream (/v1/stream); None when the process has no broker.
    live: LiveFeed | None = None


def context_of(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.api)


def request_id_of(request: Request) -> str:
    return cast(str, request.state.request_id)


async def principal_of(request: Request) -> Principal:
    """The caller, from its bearer token; 401 when there is none or it is unknown."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        principal = await context_of(request).tokens.verify(token)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        raise unavailable("cannot check the token: the database is unreachable") from None
    if principal is None:
        raise unauthorized("the bearer token is not valid")
    return principal


def valid_key(value: str) -> bool:
    """An idempotency key: 1 to 255 printable ASCII characters, no spaces."""
    return _KEY.match(value) is not None


def idempotency_key(headers: Headers) -> str | None:
    """The Idempotency-Key header: printable ASCII, at most 255 characters;
    a structured-field string ("...") is accepted too."""
    value = headers.get("idempotency-key")
    if value is None:
        return None
    # HTTP's optional whitespace only (RFC 9110 OWS): str.strip() would also
    # drop non-ASCII spaces such as U+00A0, which the document refuses.
    value = value.strip(" \t")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not valid_key(value):
        raise bad_request(
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
            field="Idempotency-Key",
        )
    return value
