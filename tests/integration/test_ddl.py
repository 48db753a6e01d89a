"""Tables created by processes that start together (API, relay, effectors)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cloud_engine.api import tokens
from cloud_engine.bus.relay_log import RelayLog
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.ddl import create_once

pytestmark = pytest.mark.postgres


async def connect(target: DatabaseTarget) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=target.host, port=target.port, user=target.user, database=target.dbname
    )


async def test_the_same_table_created_at_once_by_many_is_created_once(pg_target):
    conns = [await connect(pg_target) for _ in range(8)]
    table = f'"{pg_target.schema}".racing'
    statement = f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY)"
    try:
        for _ in range(3):
            await conns[0].execute(f"DROP TABLE IF EXISTS {table}")
            # Unserialised, some of these fail on pg_type's unique key.
            await asyncio.gather(*(create_once(c, statement) for c in conns))
            assert await conns[0].fetchval(f"SELECT count(*) FROM {table}") == 0
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def test_components_prepare_their_tables_at_once(pg_target):
    conns = [await connect(pg_target) for _ in range(6)]
    log = RelayLog(pg_target.schema, "relay")
    try:
        await asyncio.gather(
            *(tokens.prepare(c, pg_target.schema) for c in conns[:3]),
            *(log.prepare(c) for c in conns[3:]),
        )
        assert await log.load(conns[0]) == (0, {})
    finally:
        await asyncio.gather(*(c.close() for c in conns))
