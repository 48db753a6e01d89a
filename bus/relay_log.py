"""The relay's view of PostgreSQL: the log it follows and the position it keeps."""

from __future__ import annotations

import json

import asyncpg

from cloud_engine.infra.ddl import create_once
from cloud_engine.infra.tables import events_table


class RelayLog:
    def __init__(self, schema: str, name: str) -> None:
        self.name = name
        self.events = events_table(schema)
        self.positions = f'"{schema}".cloudengine_relay'

    async def prepare(self, conn: asyncpg.Connection) -> None:
        await create_once(
            conn,
            f"CREATE TABLE IF NOT EXISTS {self.positions} ("
            " name text PRIMARY KEY, position bigint NOT NULL,"
            " offsets jsonb NOT NULL DEFAULT '{}'::jsonb,"
            " updated_at timestamptz NOT NULL DEFAULT now())",
        )

    async def load(self, conn: asyncpg.Connection) -> tuple[int, dict[str, int]]:
        """The saved position and the end offset seen per "topic:partition"."""
        row = await conn.fetchrow(
            f"SELECT position, offsets FROM {self.positions} WHERE name = $1", self.name
        )
        if row is None:
            return 0, {}
        offsets = {k: int(v) for k, v in json.loads(row["offsets"]).items()}
        return int(row["position"]), offsets

    async def save(self, conn: asyncpg.Connection, position: int, offsets: dict[str, int]) -> None:
        # No need to wait for the WAL flush: a position lost in a crash only
        # means republishing a few acknowledged events, which consumers dedupe.
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit TO OFF")
            await conn.execute(
                f"INSERT INTO {self.positions} (name, position, offsets)"
                " VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position,"
                " offsets = EXCLUDED.offsets, updated_at = now()",
                self.name,
                position,
                json.dumps(offsets),
            )

    async def latest(self, conn: asyncpg.Connection) -> int:
        """The newest global position (0 for an empty log)."""
        return int(
            await conn.fetchval(f"SELECT coalesce(max(notification_id), 0) FROM {self.events}")
        )

    async def read(self, conn: asyncpg.Connection, after: int, limit: int) -> list[asyncpg.Record]:
        """Events after a global position, in order (positions follow commit order)."""
        return list(
            await conn.fetch(
                "SELECT notification_id, originator_id, originator_version, topic, state"
                f" FROM {self.events} WHERE notification_id > $1"
                " ORDER BY notification_id LIMIT $2",
                after,
                limit,
            )
        )
