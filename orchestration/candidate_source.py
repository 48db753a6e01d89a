"""Where the planner's candidates come from: the read models, corrected
from the log. (What a candidate is, the planner's input and answer types,
is engine/planning/candidates.py.)

Hosts and pools come from rm_host / rm_storage_pool, so a plan can be stale:
the place step reserves on the Host and StoragePool aggregates themselves,
which refuse what no longer fits. Placement (orchestration.placement) then
loads the refusing host and pools from the log and hands them to correct(): until the read model
reaches their versions, plans use those instead of the rows. Fresh rows
alone are not enough, because the projection can be seconds behind (a burst
of placements after an engine restart) and every retry would pick the same
full host again. The snapshot is cached for a short time because building
the index over thousands of hosts costs more than one plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.planning.candidates import (
    HostCandidate,
    PoolCandidate,
    host_candidate,
    pool_candidate,
    reservable_cpus,
)
from cloud_engine.engine.planning.planner import Planner
from cloud_engine.infra.tables import events_table, read_model


class _HostRow(msgspec.Struct):
    zone_id: UUID
    pod_id: UUID
    cluster_id: UUID
    state: str
    cpu_cores: int
    cpu_overcommit: float
    ram_total_mb: int
    cpus_used: int
    ram_used_mb: int
    tags: list[str] = []
    liveness: str = "Up"


class _PoolRow(msgspec.Struct):
    zone_id: UUID
    cluster_id: UUID | None
    state: str
    total_bytes: int
    used_bytes: int
    tags: list[str] = []
    host_id: UUID | None = None


_host = msgspec.json.Decoder(_HostRow)
_pool = msgspec.json.Decoder(_PoolRow)


def host_from_row(host_id: UUID, data: bytes | str) -> HostCandidate:
    row = _host.decode(data)
    return HostCandidate(
        id=host_id,
        zone_id=row.zone_id,
        pod_id=row.pod_id,
        cluster_id=row.cluster_id,
        # A host not known alive takes nothing, whatever its admin state.
        state=(row.state if row.liveness == "Up" else "Down"),  # type: ignore[arg-type]
        cpu_total=reservable_cpus(row.cpu_cores, row.cpu_overcommit),
        cpu_used=row.cpus_used,
        ram_total_mb=row.ram_total_mb,
        ram_used_mb=row.ram_used_mb,
        tags=frozenset(row.tags),
    )


def pool_from_row(pool_id: UUID, data: bytes | str) -> PoolCandidate:
    row = _pool.decode(data)
    return PoolCandidate(
        id=pool_id,
        zone_id=row.zone_id,
        cluster_id=row.cluster_id,
        state=row.state,  # type: ignore[arg-type]
        total_bytes=row.total_bytes,
        used_bytes=row.used_bytes,
        tags=frozenset(row.tags),
        host_id=row.host_id,
    )


class CandidateSource:
    def __init__(self, pool: asyncpg.Pool, schema: str, *, ttl_s: float = 0.5) -> None:
        self.pool = pool
        self.schema = schema
        self.ttl_s = ttl_s
        self._planner: Planner | None = None
        self._hosts: list[HostCandidate] = []
        self._pools: list[PoolCandidate] = []
        self._at = 0.0
        # Read from the log after a refusal, by id: (version, candidate). An
        # entry goes once the read model's row reaches its version.
        self._true_hosts: dict[UUID, tuple[int, HostCandidate]] = {}
        self._true_pools: dict[UUID, tuple[int, PoolCandidate]] = {}

    def _table(self, name: str) -> str:
        return read_model(self.schema, name)

    async def _fetch(self, name: str) -> list[Any]:
        try:
            return list(await self.pool.fetch(f"SELECT id, version, data FROM {self._table(name)}"))
        except asyncpg.UndefinedTableError:
            return []  # nothing projected yet

    async def planner(self, *, fresh: bool = False) -> Planner:
        if fresh or self._planner is None or time.monotonic() - self._at > self.ttl_s:
            host_rows = await self._fetch("host")
            pool_rows = await self._fetch("storage_pool")
            # Merged after both reads, with no await until cached: a
            # correction made while they ran is in this snapshot.
            self._hosts = _merged(host_rows, self._true_hosts, host_from_row)
            self._pools = _merged(pool_rows, self._true_pools, pool_from_row)
            self._planner = Planner(self._hosts, self._pools)
            self._at = time.monotonic()
        return self._planner

    async def behind(self) -> list[UUID]:
        """The hosts and pools whose rows are older than the log: what a
        refusal needs read from the log before it is final. One index probe
        per row, so it is for refusals, not for every plan."""
        events = events_table(self.schema)
        stale: list[UUID] = []
        for name in ("host", "storage_pool"):
            try:
                rows = await self.pool.fetch(
                    f"SELECT r.id FROM {self._table(name)} r WHERE EXISTS (SELECT 1"
                    f" FROM {events} e WHERE e.originator_id = r.id"
                    " AND e.originator_version > r.version)"
                )
            except asyncpg.UndefinedTableError:
                continue
            stale.extend(r["id"] for r in rows)
        return stale

    def correct(self, aggregates: Iterable[Host | StoragePool]) -> None:
        """Plan with these (read from the log) instead of their read-model
        rows until the rows catch up; the next planner() reads afresh."""
        for a in aggregates:
            # Two refusals read at different times: the later version stands.
            if isinstance(a, Host):
                if a.version > self._true_hosts.get(a.id, (0,))[0]:
                    self._true_hosts[a.id] = (a.version, host_candidate(a))
            elif a.version > self._true_pools.get(a.id, (0,))[0]:
                self._true_pools[a.id] = (a.version, pool_candidate(a))
        self._planner = None

    def restricted(self, cluster_id: UUID, host_id: UUID | None = None) -> Planner:
        """A planner over one cluster's hosts (a stopped VM's disks are
        there), or over one host (they are on its local storage)."""
        hosts = [h for h in self._hosts if h.cluster_id == cluster_id and host_id in (None, h.id)]
        return Planner(hosts, self._pools)


C = TypeVar("C", HostCandidate, PoolCandidate)


def _merged(
    rows: list[Any], truth: dict[UUID, tuple[int, C]], from_row: Callable[[UUID, Any], C]
) -> list[C]:
    """The rows' candidates, with the log's where a row is older than it."""
    merged: list[C] = []
    for r in rows:
        known = truth.get(r["id"])
        if known is not None:
            if int(r["version"]) < known[0]:
                merged.append(known[1])
                continue
            del truth[r["id"]]
        merged.append(from_row(r["id"], r["data"]))
    if truth:
        # Entries whose rows are gone (a rebuild emptied the tables).
        present = {r["id"] for r in rows}
        for gone in truth.keys() - present:
            del truth[gone]
    return merged
