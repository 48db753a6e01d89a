"""Schema statements that processes started together may run at once.

PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against itself: two at
once can both pass the check and one fails on the catalog's unique key
(pg_type_typname_nsp_index). A transaction-scoped advisory lock per statement
makes them take turns; the second then finds the table and does nothing.
"""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cloud_engine.infra.database import advisory_key


async def create_once(conn: asyncpg.Connection | PoolConnectionProxy, statement: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(f"ddl {statement}"))
        await conn.execute(statement)
