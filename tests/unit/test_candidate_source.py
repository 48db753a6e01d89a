"""orchestration.candidate_source with a fake row source (the real one is in
tests/integration/test_placement.py): what correct() hands in replaces a
row until the row reaches its version, also when made during a rebuild."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.planning.candidates import PlacementRequest, Refusal
from cloud_engine.orchestration.candidate_source import CandidateSource

ZONE, POD, CLUSTER = uuid4(), uuid4(), uuid4()
REQUEST = PlacementRequest(vm_id=uuid4(), zone_id=ZONE, cpus=1, ram_mb=64, root_size_bytes=1)


def host(name: str) -> Host:
    return Host.create(
        zone_id=ZONE,
        pod_id=POD,
        cluster_id=CLUSTER,
        name=name,
        cpu_cores=1,
        ram_mb=1024,
        libvirt_uri="test:///default",
    )


def row(h: Host) -> dict[str, Any]:
    data = {
        "zone_id": str(h.zone_id),
        "pod_id": str(h.pod_id),
        "cluster_id": str(h.cluster_id),
        "state": h.state,
        "cpu_cores": h.cpu_cores,
        "cpu_overcommit": h.cpu_overcommit,
        "ram_total_mb": h.ram_total_mb,
        "cpus_used": h.cpus_used,
        "ram_used_mb": h.ram_used_mb,
    }
    return {"id": h.id, "version": h.version, "data": msgspec.json.encode(data)}


POOL = {
    "id": uuid4(),
    "version": 1,
    "data": msgspec.json.encode(
        {
            "zone_id": str(ZONE),
            "cluster_id": str(CLUSTER),
            "state": "Enabled",
            "total_bytes": 1 << 40,
            "used_bytes": 0,
        }
    ),
}


class Rows:
    """Answers the host and pool queries; on_pools runs between the two."""

    def __init__(self, hosts: list[dict[str, Any]]) -> None:
        self.hosts = hosts
        self.on_pools: Any = None
        self.fetches = 0

    async def fetch(self, sql: str) -> list[dict[str, Any]]:
        self.fetches += 1
        if "rm_host" in sql:
            return self.hosts
        if self.on_pools is not None:
            self.on_pools()
            self.on_pools = None
        await asyncio.sleep(0)
        return [POOL]


def chosen(planner: Any) -> UUID | None:
    result = planner.plan(REQUEST)
    return None if isinstance(result, Refusal) else result.host_id


async def test_the_log_replaces_an_older_row_until_the_row_catches_up() -> None:
    a = host("a")
    rows = Rows([row(a)])
    candidates = CandidateSource(rows, "s", ttl_s=3600)  # type: ignore[arg-type]
    assert chosen(await candidates.planner()) == a.id

    a.reserve(uuid4(), 1, 64)  # full in the log, not in its row
    candidates.correct([a])
    assert chosen(await candidates.planner()) is None  # rebuilt at once, with the log's

    a.release(next(iter(a.reservations)))
    rows.hosts = [row(a)]  # the row now newer than the correction: it rules
    assert chosen(await candidates.planner(fresh=True)) == a.id
    assert not candidates._true_hosts


async def test_a_correction_made_while_the_rows_are_read_is_in_the_snapshot() -> None:
    a = host("a")
    rows = Rows([row(a)])
    candidates = CandidateSource(rows, "s", ttl_s=3600)  # type: ignore[arg-type]
    a.reserve(uuid4(), 1, 64)
    # The correction lands after the host rows were read, before the pools'.
    rows.on_pools = lambda: candidates.correct([a])
    assert chosen(await candidates.planner()) is None
    before = rows.fetches
    assert chosen(await candidates.planner()) is None  # cached, with it
    assert rows.fetches == before
