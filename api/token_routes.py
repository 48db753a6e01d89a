"""Tokens over HTTP, for administrators: list (never a secret or its hash),
create (the secret in the answer, once), show, revoke.

Not engine commands: tokens live in their own table beside the event store
(api/tokens.py), like the server-side `cloud-engine token create`. A
revoked token is refused by every API process within tokens.CACHE_SECONDS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from cloud_engine.api import tokens
from cloud_engine.api.auth import ACCOUNT_PATTERN, Principal
from cloud_engine.api.codec import json_response, read_json
from cloud_engine.api.context import context_of, principal_of
from cloud_engine.api.problems import forbidden, not_found
from cloud_engine.api.reads import parse_query

log = structlog.get_logger("api.tokens")

Handler = Callable[[Request], Awaitable[Response]]
Account = Annotated[str, msgspec.Meta(pattern=ACCOUNT_PATTERN)]
TEN_YEARS_S = 10 * 366 * 86400


class TokenCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new token. expires_in_s: seconds from now until it stops working
    (none: until revoked)."""

    role: Literal["admin", "user"]
    account: Account
    expires_in_s: Annotated[int, msgspec.Meta(ge=1, le=TEN_YEARS_S)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=255, pattern="^[^\\x00]*$")] = ""


class TokenQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account: Account | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 500


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """A token as listed: who it acts for, until when; never its secret.
    state: active, expired or revoked."""

    id: UUID
    role: str
    account: str
    description: str
    state: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(Token, frozen=True, kw_only=True):
    """The new token: `token` is its secret, shown this once."""

    token: str


class TokenPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Token]


def _view(row: dict[str, Any], now: datetime) -> Token:
    return Token(**{k: row[k] for k in tokens.COLUMNS.split(", ")}, state=tokens.state(row, now))


async def _admin(request: Request) -> Principal:
    principal = await principal_of(request)
    if not principal.is_admin:
        raise forbidden("tokens are managed by administrators")
    return principal


async def _now(conn: Any) -> datetime:
    value: datetime = await conn.fetchval("SELECT now()")
    return value


async def list_tokens(request: Request) -> Response:
    await _admin(request)
    query = parse_query(request, TokenQuery)
    ctx = context_of(request)
    async with ctx.pool.acquire() as conn:
        rows = await tokens.listing(conn, ctx.schema, query.account, query.limit)
        now = await _now(conn)
    return json_response(TokenPage(items=[_view(r, now) for r in rows]))


async def create_token(request: Request) -> Response:
    principal = await _admin(request)
    body = await read_json(request, TokenCreate)
    ctx = context_of(request)
    expires = None if body.expires_in_s is None else timedelta(seconds=body.expires_in_s)
    async with ctx.pool.acquire() as conn:
        secret, made = await tokens.create(
            conn, ctx.schema, body.role, body.account,
            expires_in=expires, description=body.description,
        )  # fmt: skip
        row = await tokens.find(conn, ctx.schema, made.token_id)
        now = await _now(conn)
    assert row is not None
    log.info("token created", token_id=str(made.token_id), role=made.role,
             account=made.account, by=principal.actor)  # fmt: skip
    view = _view(row, now)
    created = TokenCreated(**msgspec.structs.asdict(view), token=secret)
    return json_response(created, 201, {"Location": f"/v1/tokens/{made.token_id}"})


def _id(request: Request) -> UUID:
    value = request.path_params["id"]
    return value if isinstance(value, UUID) else UUID(str(value))


async def get_token(request: Request) -> Response:
    await _admin(request)
    ctx = context_of(request)
    async with ctx.pool.acquire() as conn:
        row = await tokens.find(conn, ctx.schema, _id(request))
        now = await _now(conn)
    if row is None:
        raise not_found("token not found")
    return json_response(_view(row, now))


async def revoke_token(request: Request) -> Response:
    principal = await _admin(request)
    ctx = context_of(request)
    async with ctx.pool.acquire() as conn:
        row = await tokens.revoke(conn, ctx.schema, _id(request))
        now = await _now(conn)
    if row is None:
        raise not_found("token not found")
    log.info("token revoked", token_id=str(row["id"]), by=principal.actor)
    return json_response(_view(row, now))


ROUTES: list[tuple[str, str, Handler]] = [
    ("/v1/tokens", "GET", list_tokens),
    ("/v1/tokens", "POST", create_token),
    ("/v1/tokens/{id}", "GET", get_token),
    ("/v1/tokens/{id}/revoke", "POST", revoke_token),
]
BODIES: list[type[msgspec.Struct]] = [TokenCreate, Token, TokenCreated, TokenPage]
