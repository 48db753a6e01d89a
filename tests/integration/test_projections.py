"""Read models on real PostgreSQL: live application and a rebuild agree."""

from __future__ import annotations

import asyncpg
import pytest
from eventsourcing.persistence import StoredEvent

from cloud_engine.bus.relay_log import RelayLog
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Rebuild
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

        progress = await Rebuild(pg_target).run()
        assert progress.events == store.max_position()
        assert await checksum(conn, pg_target.schema) == live
        position = await readmodel.Applier(pg_target.schema).position(conn)
        assert position == store.max_position()

        host = await conn.fetchrow(f'SELECT data FROM "{pg_target.schema}".rm_host LIMIT 1')
        assert '"cpus_free"' in host["data"]
    finally:
        await conn.close()


def test_replay_and_status_commands(pg_target: DatabaseTarget, service: CommandService, store):
    import os
    import subprocess
    import sys

    through_service(service)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_DATABASE_URL=pg_target.url(),
        CLOUD_ENGINE_DATABASE_SCHEMA=pg_target.schema,
        CLOUD_ENGINE_LOG_LEVEL="warning",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloud_engine.runner.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    replay = cli("replay", "all", "--to-position", "10")
    assert replay.returncode == 0, replay.stderr
    assert "rebuilt from 10 events up to position 10" in replay.stdout
    status = cli("projections", "status")
    assert status.returncode == 0, status.stderr
    lag = store.max_position() - 10
    assert f"position         10  lag {lag}" in status.stdout
    full = cli("replay", "aggregates")
    assert full.returncode == 0, full.stderr
    assert "lag 0" in cli("projections", "status").stdout
    bad = cli("replay", "nonsense")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


async def test_wait_for_position_is_bounded(pg_target: DatabaseTarget, store: EventStore):
    from cloud_engine.projections.status import NotYet, wait_for_position

    conn = await _connect(pg_target)
    try:
        await readmodel.prepare(conn, pg_target.schema)
        with pytest.raises(NotYet, match="not yet at 5"):
            await wait_for_position(conn, pg_target.schema, 5, timeout=0.1)
        await conn.execute(
            f'INSERT INTO "{pg_target.schema}".rm_positions (projection, position)'
            " VALUES ('aggregates', 7)"
        )
        assert await wait_for_position(conn, pg_target.schema, 5, timeout=0.1) == 7
    finally:
        await conn.close()


async def test_wait_for_versions_waits_for_the_commands_own_rows(
    pg_target: DatabaseTarget, service: CommandService, store: EventStore
):
    from cloud_engine.engine.commands.fabric import CreateZone, DisableZone
    from cloud_engine.projections.status import NotYet, wait_for_versions

    zone = service.execute(CreateZone(name="z1"))
    disabled = service.execute(DisableZone(zone_id=zone.aggregate_id))
    conn = await _connect(pg_target)
    try:
        await readmodel.prepare(conn, pg_target.schema)
        with pytest.raises(NotYet, match="has not reached version 1"):
            await wait_for_versions(conn, pg_target.schema, zone.versions, timeout=0.1)
        await apply_live(conn, pg_target.schema, page=100)
        await wait_for_versions(conn, pg_target.schema, disabled.versions, timeout=0.1)
        row = await conn.fetchrow(f'SELECT state FROM "{pg_target.schema}".rm_zone')
        assert row["state"] == "Disabled"
    finally:
        await conn.close()
