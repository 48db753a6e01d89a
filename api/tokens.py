"""Bearer tokens, stored hashed in the event store's schema.

A token is `ce_` and 32 random bytes (URL-safe base64); only its SHA-256 is
stored, so a leaked table gives no usable token. The secret has 256 bits of
entropy, which makes a plain (unsalted, fast) hash the right tool: there is
nothing to guess. Lookups go by the hash, so no comparison leaks timing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cloud_engine.api.auth import Principal, Role, valid_account
from cloud_engine.infra.ddl import create_once

TABLE = "cloudengine_api_tokens"
PREFIX = "ce_"
MAX_TOKEN_LENGTH = 256
# A verified token is trusted this long before the table is asked again.
CACHE_SECONDS = 30.0
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


async def create(conn: Conn, schema: str, role: Role, account: str) -> tuple[str, Principal]:
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
        f"INSERT INTO {table(schema)} (id, secret_sha256, role, account) VALUES ($1, $2, $3, $4)",
        principal.token_id,
        digest(secret),
        role,
        account,
    )
    return secret, principal


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
            f"SELECT id, role, account FROM {table(self._schema)} WHERE secret_sha256 = $1", key
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
