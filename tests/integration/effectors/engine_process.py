"""`cloud-engine engine` as a real subprocess, and the audits the engine
process tests read from the log and from libvirt (test_engine_kill.py,
test_two_engines.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from psycopg.sql import SQL, Identifier

from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from tests.integration.cli_process import CliProcess, cli_env

A = TypeVar("A", bound=Aggregate)


class EngineProcess(CliProcess):
    """`cloud-engine engine` on the test's schema and topic prefix; env holds
    variables of its environment beyond those (applied last)."""

    def __init__(
        self,
        target: DatabaseTarget,
        broker: str,
        prefix: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(["engine"], cli_env(target, broker, prefix, env), log, append=False)


def all_aggregates(store: EventStore) -> dict[uuid.UUID, Aggregate]:
    """Every aggregate in the log, in its current state."""
    query = SQL("SELECT DISTINCT originator_id FROM {}.{}").format(
        Identifier(store.target.schema), Identifier(store.recorder.events_table_name)
    )
    with store.recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
        cursor.execute(query)
        ids = [row["originator_id"] for row in cursor.fetchall()]
    return store.load_many(ids)


def of_type(everything: dict[uuid.UUID, Aggregate], cls: type[A]) -> list[A]:
    return [a for a in everything.values() if isinstance(a, cls)]


def statuses(store: EventStore, op_ids: list[uuid.UUID]) -> dict[uuid.UUID, Operation]:
    loaded = store.load_many(op_ids)
    ops = {i: loaded[i] for i in op_ids}
    assert all(isinstance(op, Operation) for op in ops.values())
    return ops  # type: ignore[return-value]


def domains(hv: Hypervisor, names: Names) -> dict[str, bool]:
    """This test's domains on libvirt: name -> active."""
    prefix = f"{names.prefix}vm-"
    return {
        d.name(): bool(d.isActive())
        for d in hv.conn.listAllDomains(0)
        if d.name().startswith(prefix)
    }


def volume_files(hv: Hypervisor, names: Names) -> set[str]:
    """Volume files in this test's libvirt pools, template images aside."""
    found: set[str] = set()
    for pool in hv.conn.listAllStoragePools(0):
        if pool.name().startswith(names.prefix) and pool.isActive():
            pool.refresh(0)
            found |= {v.name() for v in pool.listAllVolumes(0)}
    return {f for f in found if not f.startswith("tpl-")}


async def power_off(hv: Hypervisor, names: Names) -> None:
    """Destroy this test's domains side by side: one at a time, as the
    hypervisor fixture's clean-up does, takes about 2 s each."""
    prefix = f"{names.prefix}vm-"
    active = [d for d in hv.conn.listAllDomains(0) if d.name().startswith(prefix) and d.isActive()]
    await asyncio.gather(*(asyncio.to_thread(d.destroy) for d in active), return_exceptions=True)
