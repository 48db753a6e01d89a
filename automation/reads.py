"""What automation reads to find work: rows of the read models (which
hosts are not Up, which VMs a host holds). Decisions are taken on the
aggregates loaded from the log, never on these rows alone."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from cloud_engine.infra.tables import read_model
from cloud_engine.projections import readmodel


class HostRow(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    name: str
    zone_id: UUID
    cluster_id: UUID
    libvirt_uri: str
    liveness: str = "Up"


class PoolRow(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    zone_id: UUID
    url: str
    scope: str = "cluster"
    cluster_id: UUID | None = None


def _rows(cls: type[Any], rows: list[asyncpg.Record]) -> list[Any]:
    found = []
    for row in rows:
        fields = msgspec.json.decode(row["data"])
        fields["id"] = row["id"]
        found.append(msgspec.convert(fields, cls))
    return found


class Reads:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    async def hosts(self) -> list[HostRow]:
        rows = await self.pool.fetch(f"SELECT id, data FROM {read_model(self.schema, 'host')}")
        found: list[HostRow] = _rows(HostRow, rows)
        return found

    async def shared_pool_paths(self, host: HostRow) -> list[str]:
        """The paths of the shared pools the host uses: its cluster's and
        its zone's (where its heartbeat is written)."""
        rows = await self.pool.fetch(
            f"SELECT id, data FROM {read_model(self.schema, 'storage_pool')}"
        )
        pools: list[PoolRow] = _rows(PoolRow, rows)
        return [
            p.url
            for p in pools
            if (p.scope == "cluster" and p.cluster_id == host.cluster_id)
            or (p.scope == "zone" and p.zone_id == host.zone_id)
        ]

    async def vm_ids(self, field: str, host_id: UUID) -> list[UUID]:
        """VMs whose host_id or last_host_id is the host."""
        table = read_model(self.schema, "vm")
        rows = await self.pool.fetch(
            f"SELECT id FROM {table} WHERE {readmodel.key_sql(field)} = $1",
            readmodel.key_value(field, host_id),
        )
        return [r["id"] for r in rows]
