"""The drainer: moves the VMs of a host in maintenance away (the
host.maintenance operation's migrate step, engine/operations/
host_maintenance.py), and the volumes of a storage pool in maintenance to
another pool of its scope (storage_pool.maintenance, pool_maintenance.py:
one volume.migrate each, via MoveOffPool, to the Enabled pool of the same
zone, cluster or host with the most room), through the commands any
client sends. What follows is said of hosts; pools go the same way.

Every `interval_s` it looks at each unfinished drain and at the VMs the
log puts on its host (running there, or stopped with it as their last
host), and for each of them:

- a VM busy with an operation of its own (a start, a stop, a migration
  someone else asked for) is waited for;
- otherwise it asks for a vm.migrate (MigrateOffHost, refused once the
  drain has ended) under an operation id derived from the drain's and the
  VM's (uuid5): live for a running VM, offline for a
  stopped one (its record re-homed, the domain undefined on the host, any
  local disk copied), the destination chosen by the planner within the
  VM's affinity rules. The derived id makes the request idempotent: a
  drainer killed and started again finds the migration it asked for and
  never asks twice, so no VM is moved by two migrations at once;
- a migration refused or failed (no host with room, affinity, a running
  VM on a host's local disk, ...) makes the VM blocked, with the reason.
  It is not tried again by this drain.

It reports what it found (ReportHostDrain: the VMs left, the blocked ones)
whenever that changes; the operation puts the host in ErrorInMaintenance
while some VM is blocked, and in Maintenance once none is left. Several
drainers may run: they derive the same ids and the engine refuses what
another already asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from cloud_engine.engine.commands.base import CommandContext
from cloud_engine.engine.commands.maintenance import (
    MigrateOffHost,
    MoveOffPool,
    ReportHostDrain,
    ReportPoolDrain,
)
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.host_maintenance import migration_id
from cloud_engine.engine.operations.operation import FINISHED, Operation
from cloud_engine.engine.operations.pool_maintenance import move_id
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from cloud_engine.infra.tables import read_model
from cloud_engine.projections.readmodel import key_sql

log = structlog.get_logger("automation.drain")

KIND = "host.maintenance"
POOL_KIND = "storage_pool.maintenance"
ACTOR = "drainer"
# VM states that are gone from any host (nothing to move).
GONE = ("Destroyed", "Expunging", "Expunged")


class Drainer:
    def __init__(
        self,
        service: CommandService,
        store: EventStore,
        target: DatabaseTarget,
        *,
        interval_s: float = 0.5,
    ) -> None:
        self.service, self.store, self.target = service, store, target
        self.interval_s = interval_s
        self._db: asyncpg.Pool | None = None
        self._reported: dict[UUID, tuple[int, tuple[str, ...]]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        self._db = await create_pool(self.target, max_size=2)
        log.info("drainer_started", interval_s=self.interval_s)
        try:
            while not stop.is_set():
                try:
                    await self.round()
                except (OSError, asyncpg.PostgresError) as e:
                    log.warning("drain_round_failed", error=str(e))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await self._db.close()
            self._db = None

    async def round(self) -> int:
        """One look at every unfinished drain; returns how many."""
        assert self._db is not None
        try:
            rows = await self._db.fetch(
                f"SELECT id FROM {read_model(self.target.schema, 'operation')}"
                " WHERE NOT (state = ANY($1::text[])) AND (data ->> 'kind') = ANY($2::text[])",
                list(FINISHED),
                [KIND, POOL_KIND],
            )
        except asyncpg.UndefinedTableError:
            return 0
        for row in rows:
            await self.drain(row["id"])
        return len(rows)

    async def drain(self, op_id: UUID) -> None:
        op = await asyncio.to_thread(self.store.load, op_id)
        if not isinstance(op, Operation) or op.finished or op.current_step != "migrate":
            return
        if op.kind == POOL_KIND:
            remaining, blocked = await self._pool_round(op)
            await self._report(op, remaining, blocked)
            return
        host_id = op.resource_id
        remaining, blocked = 0, []
        for vm_id in await self._vms_on(host_id):
            vm = await asyncio.to_thread(self.store.load, vm_id)
            if not isinstance(vm, VirtualMachine) or not _on(vm, host_id):
                continue
            remaining += 1
            reason = await self._move(op, vm)
            if reason is not None:
                blocked.append(f"vm {vm.id} ({vm.name}): {reason}")
        await self._report(op, remaining, blocked)

    async def _report(self, op: Operation, remaining: int, blocked: list[str]) -> None:
        op_id = op.id
        found = (remaining, tuple(sorted(blocked)))
        # Nothing left on the record is said again every round: the drain
        # ends only once the last move has also given the capacity (or
        # space) back, which its operation does a moment after the record
        # moved.
        changed = self._reported.get(op_id) != found
        if not changed and (remaining or found[1]):
            return
        context = CommandContext(actor=ACTOR, correlation_id=str(op_id))
        report = ReportPoolDrain if op.kind == POOL_KIND else ReportHostDrain
        try:
            await self.service.execute_async(
                report(operation_id=op_id, remaining=remaining, blocked=found[1]), context
            )
        except DomainError as e:
            log.warning("drain_report_refused", operation_id=str(op_id), reason=str(e))
            return
        self._reported[op_id] = found
        if not changed:
            return
        log.info(
            "drain_reported",
            operation_id=str(op_id),
            resource_id=str(op.resource_id),
            remaining=remaining,
            blocked=len(blocked),
        )

    async def _pool_round(self, drain: Operation) -> tuple[int, list[str]]:
        """The volumes in the drained pool, each moved (or on its way) or
        blocked with its reason."""
        assert self._db is not None
        pool_id = drain.resource_id
        pool = await self._pool_row(pool_id)
        rows = await self._db.fetch(
            f"SELECT id FROM {read_model(self.target.schema, 'volume')}"
            f" WHERE {key_sql('pool_id')} = $1",
            str(pool_id),
        )
        remaining, blocked = 0, []
        for row in sorted(rows, key=lambda r: r["id"]):
            volume = await asyncio.to_thread(self.store.load, row["id"])
            if not isinstance(volume, Volume) or volume.pool_id != pool_id:
                continue
            if volume.state == "Destroyed":
                continue
            remaining += 1
            reason = await self._move_volume(drain, volume, pool)
            if reason is not None:
                blocked.append(f"volume {volume.id} ({volume.name}): {reason}")
        return remaining, blocked

    async def _pool_row(self, pool_id: UUID) -> dict[str, Any]:
        assert self._db is not None
        row = await self._db.fetchrow(
            f"SELECT state, data FROM {read_model(self.target.schema, 'storage_pool')}"
            " WHERE id = $1",
            pool_id,
        )
        return {} if row is None else dict(json.loads(row["data"]), id=pool_id)

    async def _target_pool(self, pool: dict[str, Any], size: int) -> UUID | None:
        """An Enabled pool of the same scope (zone, cluster, host) with room,
        the one with the most."""
        assert self._db is not None
        rows = await self._db.fetch(
            f"SELECT id, data FROM {read_model(self.target.schema, 'storage_pool')}"
            " WHERE zone_id = $1 AND state = 'Enabled' AND id <> $2",
            UUID(str(pool.get("zone_id"))),
            pool["id"],
        )
        same = ("scope", "cluster_id", "host_id")
        fits = [
            (int(d.get("free_bytes", 0)), r["id"])
            for r in rows
            if all((d := json.loads(r["data"])).get(k) == pool.get(k) for k in same)
            and int(d.get("free_bytes", 0)) >= size
        ]
        return max(fits)[1] if fits else None

    async def _move_volume(
        self, drain: Operation, volume: Volume, pool: dict[str, Any]
    ) -> str | None:
        child_id = move_id(drain.id, volume.id)
        child = await asyncio.to_thread(self.store.load, child_id)
        if isinstance(child, Operation):
            if child.status in ("failed", "compensated"):
                return child.error or f"its move {child.id} {child.status}"
            return None
        held = await asyncio.to_thread(self.store.load, guard_id(volume.id))
        if isinstance(held, ResourceGuard) and held.operation_id is not None:
            return None  # busy with an operation of its own: waited for
        target = await self._target_pool(pool, volume.size_bytes)
        if target is None:
            return f"no other Enabled {pool.get('scope')} pool of its scope has room"
        context = CommandContext(actor=ACTOR, correlation_id=str(drain.id))
        try:
            await self.service.execute_async(
                MoveOffPool(operation_id=drain.id, volume_id=volume.id, pool_id=target), context
            )
        except DomainError as e:
            if await asyncio.to_thread(self.store.load, child_id) is not None:
                return None
            if "is not in pool" in str(e) or str(e).startswith(f"drain {drain.id} is"):
                return None
            log.info("drain_volume_blocked", volume_id=str(volume.id), reason=str(e))
            return str(e)
        log.info("drain_volume_moving", volume_id=str(volume.id), operation_id=str(child_id))
        return None

    async def _vms_on(self, host_id: UUID) -> list[UUID]:
        assert self._db is not None
        table = read_model(self.target.schema, "vm")
        rows = await self._db.fetch(
            f"SELECT id FROM {table} WHERE {key_sql('host_id')} = $1"
            f" UNION SELECT id FROM {table} WHERE {key_sql('last_host_id')} = $1",
            str(host_id),
        )
        return sorted(r["id"] for r in rows)

    async def _move(self, drain: Operation, vm: VirtualMachine) -> str | None:
        """The VM's migration asked for, or on its way: None; else why it
        cannot move."""
        child_id = migration_id(drain.id, vm.id)
        child = await asyncio.to_thread(self.store.load, child_id)
        if isinstance(child, Operation):
            if child.status in ("failed", "compensated"):
                return child.error or f"its migration {child.id} {child.status}"
            return None  # moving (or moved: the next look finds it gone)
        if vm.state not in ("Running", "Stopped"):
            held = await asyncio.to_thread(self.store.load, guard_id(vm.id))
            if isinstance(held, ResourceGuard) and held.operation_id is not None:
                return None  # busy with an operation of its own: waited for
            return f"it is {vm.state}"
        held = await asyncio.to_thread(self.store.load, guard_id(vm.id))
        if isinstance(held, ResourceGuard) and held.operation_id is not None:
            return None
        context = CommandContext(actor=ACTOR, correlation_id=str(drain.id))
        try:
            await self.service.execute_async(
                MigrateOffHost(operation_id=drain.id, vm_id=vm.id), context
            )
        except DomainError as e:
            if await asyncio.to_thread(self.store.load, child_id) is not None:
                return None  # another drainer asked meanwhile
            if "is not on host" in str(e) or str(e).startswith(f"drain {drain.id} is"):
                return None  # it left meanwhile, or the drain ended
            log.info("drain_vm_blocked", vm_id=str(vm.id), reason=str(e))
            return str(e)
        log.info("drain_vm_migrating", vm_id=str(vm.id), operation_id=str(child_id))
        return None


def _on(vm: VirtualMachine, host_id: UUID) -> bool:
    """The log puts the VM on that host (running there, or its last)."""
    if vm.state in GONE:
        return False
    if vm.host_id is not None:
        return vm.host_id == host_id
    return vm.last_host_id == host_id
