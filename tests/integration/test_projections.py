"""Read models on real PostgreSQL: live application and a rebuild agree."""

from __future__ import annotations

import asyncpg
import pytest
from eventsourcing.persistence import StoredEvent

from bus.relay_log import RelayLog
from engine.database import DatabaseTarget
from engine.mapper import MsgspecMapper
from engine.service import CommandService
from engine.store import EventStore
from projections import readmodel
from projections.replay import Rebuild
from tests.scenarios import through_service

pytestmark = pytest.mark.postgres

COMPARED = "id, version, position, state, name, account, zone_id, created_on, modified_on, data"


async def _connect(target: DatabaseTarget) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=target.host, port=target.port, user=target.user, database=target.dbname
    )


async def apply_live(conn: asyncpg.Connection, schema: str, page: int) -> None:
    """What a live worker does: events in order, in batches, one transaction each."""
    applier = readmodel.Applier(schema)
    log = RelayLog(schema, "test")
    mapper = MsgspecMapper()
    after = await applier.position(conn)
    while rows := await log.read(conn, after, page):
        events = [
            (
                int(r["notification_id"]),
                mapper.to_domain_event(
                    StoredEvent(r["originator_id"], r["originator_version"], r["topic"], r["state"])
                ),
            )
            for r in rows
        ]
        async with conn.transaction():
            await applier.apply(conn, events)
        after = events[-1][0]


async def checksum(conn: asyncpg.Connection, schema: str) -> dict[str, str]:
    sums = {}
    for aggregate_type in readmodel.AGGREGATES:
        table = f'"{schema}".{readmodel.table_name(aggregate_type)}'
        sums[aggregate_type] = await conn.fetchval(
            f"SELECT coalesce(md5(string_agg(r::text, '|' ORDER BY id)), '')"
            f" FROM (SELECT {COMPARED} FROM {table}) r"
        )
    return sums


async def test_rebuild_equals_live_and_redelivery_changes_nothing(
    pg_target: DatabaseTarget, service: CommandService, store: EventStore
):
    through_service(service)
    conn = await _connect(pg_target)
    try:
        await readmodel.prepare(conn, pg_target.schema)
        await apply_live(conn, pg_target.schema, page=7)
        live = await checksum(conn, pg_target.schema)
        assert all(live.values())  # every aggregate type has rows

        # Redelivering everything (a replayed topic) changes nothing.
        await conn.execute(f'UPDATE "{pg_target.schema}".rm_positions SET position = 0')
        await apply_live(conn, pg_target.schema, page=50)
        assert await checksum(conn, pg_target.schema) == live

        progress = await Rebuild(pg_target.schema).run(conn)
        assert progress.events == store.max_position()
        assert await checksum(conn, pg_target.schema) == live
        position = await readmodel.Applier(pg_target.schema).position(conn)
        assert position == store.max_position()

        host = await conn.fetchrow(f'SELECT data FROM "{pg_target.schema}".rm_host LIMIT 1')
        assert '"cpus_free"' in host["data"]
    finally:
        await conn.close()
