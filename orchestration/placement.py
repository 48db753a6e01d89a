"""Placing an operation's VM: plan on the read models, reserve on the log.

The planner works on read-model rows (orchestration.candidate_source); the place
step then reserves on the Host and StoragePool aggregates, which refuse what
no longer fits. A capacity or state refusal names the aggregate that
refused (DomainError.owner): if it is the chosen host or a chosen pool, the
plan was made on stale rows, the planner is corrected with what the log
says of them and tries again; otherwise the refusal is about something
else (a network out of addresses, the VM's state) and is the operation's
failure reason.
An affinity refusal is planned again (the group is read from the log). The
planner's own refusal (no host fits) is final only on rows read then and
brought up to the log: room released a moment ago is not refused.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import msgspec
import structlog

from cloud_engine.engine.commands.base import CommandContext
from cloud_engine.engine.commands.operations import PlaceOperation
from cloud_engine.engine.errors import (
    CapacityExceeded,
    DomainError,
    InvalidTransition,
    PlacementRefused,
)
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.affinity import AffinityGroup, group_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.registry import kind_of
from cloud_engine.engine.planning.candidates import (
    AffinityRule,
    PlacementRequest,
    Refusal,
    Strategy,
    VolumeRequest,
)
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.orchestration.candidate_source import CandidateSource

log = structlog.get_logger("orchestration.placement")

# Each refused attempt corrects the planner's view of the host and pools it
# chose, so this bounds how many stale full hosts one placement can meet.
PLACE_ATTEMPTS = 8
CATCH_UP_MAX = 1_000  # hosts and pools read from the log before a refusal


class Placer:
    def __init__(
        self, service: CommandService, store: EventStore, candidates: CandidateSource
    ) -> None:
        self.service = service
        self.store = store
        self.candidates = candidates

    async def place(self, op: Operation, context: CommandContext) -> str | None:
        """Plan and place: None once placed, else why it cannot be."""
        candidates = self.candidates
        # The VM and the volumes the operation made, in one read.
        loaded = await asyncio.to_thread(
            self.store.load_many, [op.resource_id, *op.params.volume_ids]
        )
        vm = loaded.get(op.resource_id)
        if not isinstance(vm, VirtualMachine):
            return "the VM is gone"
        volumes = [v for v in loaded.values() if isinstance(v, Volume)]
        requests, home = await self._requests(op, vm, volumes)
        strategy: Strategy = "dispersing" if op.params.strategy == "dispersing" else "first-fit"
        fresh = False  # the first plan may use the cached rows
        caught_up = False  # the rows behind the log were corrected from it
        for _ in range(PLACE_ATTEMPTS):
            groups = await self._groups(op, vm)
            planner = await candidates.planner(fresh=fresh)
            if home is not None:
                planner = candidates.restricted(*home)
            for request in requests:
                result = planner.plan(request, groups, strategy)
                if not isinstance(result, Refusal):
                    break
            if isinstance(result, Refusal):
                if not fresh:
                    # Only rows read now can say no room: the cached ones may
                    # predate a release.
                    fresh = True
                    continue
                if not caught_up:
                    # Nor rows the projection has not brought up to the log
                    # (room just released, a host just enabled).
                    caught_up = True
                    if await self._catch_up():
                        continue
                log.info("operation_unplaceable", operation_id=str(op.id), reason=result.message)
                return result.message
            fresh = True
            command = PlaceOperation(
                operation_id=op.id, host_id=result.host_id, pool_ids=result.pool_ids
            )
            try:
                await self.service.execute_async(command, context)
                return None
            except PlacementRefused as e:
                # An affinity group changed meanwhile: it is read from the
                # log on the next attempt.
                log.info("placement_retried", operation_id=str(op.id), reason=str(e))
            except (CapacityExceeded, InvalidTransition) as e:
                chosen = [result.host_id, *result.pool_ids]
                if e.owner not in chosen:
                    # Not the host or pools the plan chose (a network out of
                    # addresses, the VM's state): no plan can do better.
                    return str(e)
                # They changed since their rows: plan on the log's view.
                await self._read_from_log(chosen)
                log.info("placement_retried", operation_id=str(op.id), reason=str(e))
            except DomainError as e:
                return str(e)
        return f"placement kept conflicting after {PLACE_ATTEMPTS} attempts"

    async def _catch_up(self) -> bool:
        """Correct the planner with the log's hosts and pools where their
        rows are behind it; False if none were."""
        behind = await self.candidates.behind()
        if not behind:
            return False
        # Bounded: a refusal while the projection is far behind everywhere
        # must not load the whole fabric from the log.
        await self._read_from_log(behind[:CATCH_UP_MAX])
        return True

    async def _read_from_log(self, ids: list[UUID]) -> None:
        """Plan with what the log says of these hosts and pools until the
        read model catches up with them."""
        loaded = await asyncio.to_thread(self.store.load_many, ids)
        self.candidates.correct(a for a in loaded.values() if isinstance(a, Host | StoragePool))

    async def _groups(self, op: Operation, vm: VirtualMachine) -> list[AffinityRule]:
        """The VM's affinity group, read from the log (not a read model): two
        members placed at once must each see where the other went."""
        if vm.affinity_group is None:
            return []
        group = await asyncio.to_thread(self.store.load, group_id(vm.account, vm.affinity_group))
        kind: str | None = op.params.affinity
        strict = op.params.affinity_strict
        hosts: tuple[UUID, ...] = ()
        if isinstance(group, AffinityGroup):
            kind, strict = group.kind, group.strict
            hosts = tuple(sorted(group.hosts_of_others(vm.id)))
        if kind not in ("affinity", "anti-affinity"):
            return []
        return [
            AffinityRule(
                name=vm.affinity_group,
                kind=kind,  # type: ignore[arg-type]
                strict=strict,
                host_ids=hosts,
            )
        ]

    async def _requests(
        self, op: Operation, vm: VirtualMachine, volumes: list[Volume]
    ) -> tuple[list[PlacementRequest], tuple[UUID, UUID | None] | None]:
        """What to ask the planner, in order of preference, and the cluster a
        started VM must stay in (its disks are there), with the host when
        they are on its local storage."""
        home: tuple[UUID, UUID | None] | None = None
        by_id = {v.id: v.size_bytes for v in volumes}
        # Root first: the order of Placement.pool_ids and of the place step.
        sizes = [by_id[v] for v in op.params.volume_ids if v in by_id]
        if kind_of(op.kind).keeps_disks:
            pools = await asyncio.to_thread(
                self.store.load_many, [p for p in {vm.pool_id, *(v.pool_id for v in volumes)} if p]
            )
            root = pools.get(vm.pool_id) if vm.pool_id is not None else None
            if isinstance(root, StoragePool) and root.cluster_id is not None:
                home = (root.cluster_id, root.host_id)
            # A stopped VM migrating with disks on a host's local pool: they
            # are copied, so they need room where it goes (in its cluster).
            moving = op.kind == "vm.migrate" and any(
                isinstance(p, StoragePool) and p.host_id is not None for p in pools.values()
            )
            if moving and home is not None:
                home = (home[0], None)
            else:
                sizes = [1]  # the disks stay: only reachability counts
        request = PlacementRequest(
            vm_id=vm.id,
            zone_id=vm.zone_id,
            cpus=vm.spec.cpus,
            ram_mb=vm.spec.ram_mb,
            root_size_bytes=sizes[0] if sizes else vm.spec.root_disk_gb << 30,
            data_volumes=tuple(VolumeRequest(size_bytes=s) for s in sizes[1:]),
            host_tags=vm.spec.tags,
            affinity_groups=(vm.affinity_group,) if vm.affinity_group else (),
            required_host_id=op.params.host_id,
            # A migration goes elsewhere (from where a stopped VM's disks are).
            avoid_host_ids=(op.params.source_host_id,)
            if op.kind == "vm.migrate" and op.params.source_host_id
            else (),
        )
        if op.kind == "vm.start" and op.params.host_id is None and vm.last_host_id:
            # Where it ran before first (its caches, CloudStack's habit).
            last = msgspec.structs.replace(request, required_host_id=vm.last_host_id)
            return [last, request], home
        return [request], home
