"""Bearer tokens, stored hashed in the event store's schema.

A token is `ce_` and 32 random bytes (URL-safe base64); only its SHA-256 is
stored, so a leaked table gives no usable token. The secret has 256 bits of
entropy, which makes a plain (unsalted, fast) hash the right tool: there is
nothing to guess. Lookups go by the hash, so no comparison leaks timing.

A token may expire (expires_at) and be revoked (revoked_at); rows are kept
(listed without their hashes) so who had access when stays answerable.
Every API process remembers a verified token for CACHE_SECONDS only, so a
revocation, written once to the table, stops the token on every process
within that time: no notification to lose, one indexed lookup per token
per process per half second.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cloud_engine.api.auth import Principal, Role, valid_account
from cloud_engine.infra.ddl import create_once

TABLE = "cloudengine_api_tokens"
PREFIX = "ce_"
MAX_TOKEN_LENGTH = 256
# A verified token is trusted this long before the table is asked again:
# the bound on how long a revoked token keeps working on any API process.
CACHE_SECONDS = 0.5
CACHE_SIZE = 10_000

Conn = asyncpg.Connection | PoolConnectionProxy


def table(schema: str) -> str:
    return f'"{schema}".{TABLE}'


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def prepare(conn: Conn, schema: str) -> None:
    await create_once(
        conn,
        f"CREATE TABLE IF NOT EXISTS {table(schema)} ("
        " id uuid PRIMARY KEY,"
        " secret_sha256 bytea NOT NULL UNIQUE,"
        " role text NOT NULL CHECK (role IN ('admin', 'user')),"
        " account text NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now())",
    )
    # Tables made before tokens could expire or be revoked gain the columns.
    for column in (
        "expires_at timestamptz",
        "revoked_at timestamptz",
        "description text NOT NULL DEFAULT ''",
    ):
        await create_once(conn, f"ALTER TABLE {table(schema)} ADD COLUMN IF NOT EXISTS {column}")


async def create(
    conn: Conn,
    schema: str,
    role: Role,
    account: str,
    *,
    expires_in: timedelta | None = None,
    description: str = "",
) -> tuple[str, Principal]:
    """A new token; the secret is returned once and never stored."""
    if not valid_account(account):
        raise ValueError(
            f"account {account!r}: letters, digits, '.', '_' and '-', at most 64, "
            "starting with a letter or digit"
        )
    await prepare(conn, schema)
    secret = new_secret()
    principal = Principal(token_id=uuid.uuid4(), role=role, account=account)
    await conn.execute(
        f"INSERT INTO {table(schema)} (id, secret_sha256, role, account, expires_at, description)"
        " VALUES ($1, $2, $3, $4, now() + $5::interval, $6)",
        principal.token_id,
        digest(secret),
        role,
        account,
        expires_in,
        description,
    )
    return secret, principal


COLUMNS = "id, role, account, description, created_at, expires_at, revoked_at"


async def find(conn: Conn, schema: str, token_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM {table(schema)} WHERE id = $1", token_id)
    return None if row is None else dict(row)


async def listing(conn: Conn, schema: str, account: str | None, limit: int) -> list[dict[str, Any]]:
    """Tokens, oldest first, without their hashes."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM {table(schema)} WHERE ($1::text IS NULL OR account = $1)"
        " ORDER BY created_at, id LIMIT $2",
        account,
        limit,
    )
    return [dict(r) for r in rows]


async def revoke(conn: Conn, schema: str, token_id: UUID) -> dict[str, Any] | None:
    """Revoked now (a second revoke keeps the first time); None if unknown."""
    row = await conn.fetchrow(
        f"UPDATE {table(schema)} SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        f" RETURNING {COLUMNS}",
        token_id,
    )
    return None if row is None else dict(row)


def state(row: dict[str, Any], now: datetime) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


class TokenStore:
    """Verifies bearer tokens against the table, remembering good ones briefly."""

    def __init__(self, pool: asyncpg.Pool, schema: str, ttl: float = CACHE_SECONDS) -> None:
        self._pool = pool
        self._schema = schema
        self._ttl = ttl
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal | None:
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None
        key = digest(token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await self._pool.fetchrow(
            f"SELECT id, role, account FROM {table(self._schema)} WHERE secret_sha256 = $1"
            " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
            key,
        )
        if row is None:
            self._cache.pop(key, None)
            return None
        principal = Principal(
            token_id=UUID(str(row["id"])), role=row["role"], account=row["account"]
        )
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (principal, now + self._ttl)
        return principal
