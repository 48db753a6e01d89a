"""A VM's plan read in one round trip: the VM row with its hosts, volumes,
their pools, NICs and their networks, from one query.

A VM's plan (handlers/vm_plan.py) reads four to eight rows one after
another; at hundreds of work items a second those round trips are most of
the effector's time (docs/performance.md, Effectors). VmRows answers the
same get/where calls from the rows one query returned, and asks the
database for anything it did not fetch (a VXLAN network's zone hosts, an
ISO's template), so the plan's code reads as before and gets the same
answers: every row it holds is the one a lone get/where would have read
at the moment of the query.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from cloud_engine.effectors.desired import NotProjectedYet, ReadModels, VmView, view
from cloud_engine.projections import readmodel

T = TypeVar("T", bound=msgspec.Struct)

# The read models one query holds (the VM's hosts: where it runs, ran and
# is migrating to).
FETCHED = ("vm", "host", "volume", "storage_pool", "nic", "network")
_VM_FIELDS = ("host_id", "last_host_id", "migration_target_id")


def vm_rows_sql(models: ReadModels) -> str:
    """$1: the VM's id, $2: the same as text (as data ->> 'vm_id' has it)."""
    t = {a: models.table(a) for a in FETCHED}
    hosts = ", ".join(f"(v.data ->> '{f}')::uuid" for f in _VM_FIELDS)
    vm_key = readmodel.key_sql("vm_id")
    return (
        f"WITH v AS (SELECT id, version, data FROM {t['vm']} WHERE id = $1),"
        # Its volumes both ways: by its list of disks, and by theirs naming it.
        f" vol AS (SELECT id, version, data FROM {t['volume']} WHERE {vm_key} = $2"
        f"  UNION SELECT r.id, r.version, r.data FROM {t['volume']} r, v,"
        "   jsonb_each_text(coalesce(v.data -> 'disks', '{}'::jsonb)) d"
        "   WHERE r.id = d.value::uuid),"
        f" n AS (SELECT id, version, data FROM {t['nic']} WHERE {vm_key} = $2)"
        " SELECT 'vm' AS t, id, version, data FROM v"
        f" UNION ALL SELECT 'host', h.id, h.version, h.data FROM {t['host']} h, v"
        f"  WHERE h.id IN ({hosts})"
        " UNION ALL SELECT 'volume', id, version, data FROM vol"
        f" UNION ALL SELECT 'storage_pool', p.id, p.version, p.data FROM {t['storage_pool']} p"
        "  WHERE p.id IN (SELECT (data ->> 'pool_id')::uuid FROM vol)"
        " UNION ALL SELECT 'nic', id, version, data FROM n"
        f" UNION ALL SELECT 'network', w.id, w.version, w.data FROM {t['network']} w"
        "  WHERE w.id IN (SELECT (data ->> 'network_id')::uuid FROM n)"
    )


class VmRows(ReadModels):
    """The read models as one query saw them around a VM; anything else
    is read from the database as ReadModels does."""

    def __init__(self, models: ReadModels, rows: list[asyncpg.Record]) -> None:
        super().__init__(
            models.pool, models.schema, wait_s=models.wait_s, interval_s=models.interval_s
        )
        self._rows: dict[tuple[str, UUID], asyncpg.Record] = {(r["t"], r["id"]): r for r in rows}
        self._views: dict[tuple[str, UUID], Any] = {}

    @classmethod
    async def read(cls, models: ReadModels, vm_id: UUID, at_least: int) -> VmRows:
        """Once the VM's row reflects version at_least (as ReadModels.get
        waits for it)."""
        query = vm_rows_sql(models)
        deadline = time.monotonic() + models.wait_s
        while True:
            rows = await models.pool.fetch(query, vm_id, str(vm_id))
            vm = next((r for r in rows if r["t"] == "vm"), None)
            if vm is not None and vm["version"] >= at_least:
                return cls(models, rows)
            if at_least == 0 and vm is None:
                return cls(models, rows)
            if time.monotonic() >= deadline:
                seen = None if vm is None else vm["version"]
                raise NotProjectedYet(
                    f"read model vm {vm_id} is at version {seen}, waiting for {at_least}"
                )
            await asyncio.sleep(models.interval_s)

    def _view(self, cls: type[T], aggregate_type: str, row: asyncpg.Record) -> T:
        key = (aggregate_type, row["id"])
        found = self._views.get(key)
        if found is None:
            found = self._views[key] = view(cls, row)
        assert isinstance(found, cls)
        return found

    async def get(
        self, cls: type[T], aggregate_type: str, aggregate_id: UUID, at_least: int = 0
    ) -> T | None:
        row = self._rows.get((aggregate_type, aggregate_id))
        if row is not None and row["version"] >= at_least:
            return self._view(cls, aggregate_type, row)
        # Not among the rows (a row it did not fetch, or one that did not
        # exist then) or older than asked: as ReadModels reads it.
        return await super().get(cls, aggregate_type, aggregate_id, at_least)

    async def where(self, cls: type[T], aggregate_type: str, field: str, value: UUID) -> list[T]:
        if field == "vm_id" and aggregate_type in ("volume", "nic") and self._holds(value):
            # All of them were fetched (by the same index a lone where uses).
            views = [
                self._view(cls, t, r)
                for (t, _), r in sorted(self._rows.items(), key=lambda kv: kv[0][1])
                if t == aggregate_type
            ]
            return [v for v in views if getattr(v, field) == value]
        return await super().where(cls, aggregate_type, field, value)

    def _holds(self, vm_id: UUID) -> bool:
        """Whether this query was about that VM (its volumes and NICs are here)."""
        return any(t == "vm" and i == vm_id for t, i in self._rows)

    def vm(self) -> VmView | None:
        row = next((r for (t, _), r in self._rows.items() if t == "vm"), None)
        return None if row is None else self._view(VmView, "vm", row)
