"""orchestration.placement on real PostgreSQL: a plan made on read-model rows
that lag the log is corrected from the log (the engine-kill test once failed
a deploy after four refusals on the same full host, its row seconds behind),
and a refusal that is not about the host or pools is the reason at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import pytest

from cloud_engine.engine.commands.base import CommandContext
from cloud_engine.engine.commands.compute import MarkVmRunning, MarkVmStopped
from cloud_engine.engine.commands.hosts import DisableHost, UpdateHostOvercommit
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    DeployVm,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.commands.storage import MarkVolumeCreated
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.planning.candidates import PlacementRequest, Refusal
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect, create_pool
from cloud_engine.orchestration.candidate_source import CandidateSource
from cloud_engine.orchestration.placement import Placer
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Rebuild
from tests.fabric import Fabric, FabricSpec, PoolSpec, TemplateSpec, hosts
from tests.fabric import build as build_fabric

pytestmark = pytest.mark.postgres

SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
CONTEXT = CommandContext(actor="engine", correlation_id="test")


World = Fabric[UUID]


def build(service: CommandService, host_count: int = 2) -> World:
    """Hosts of 2 vCPUs in one cluster, one roomy pool, a Ready template."""
    spec = FabricSpec(
        hosts=hosts(host_count, cpu_cores=2),
        pools=(PoolSpec(name="p", capacity_bytes=64 << 30),),
        templates=(TemplateSpec(name="t", url="http://127.0.0.1/t.qcow2"),),
    )
    return build_fabric(service, spec)


def deploy(
    service: CommandService, store: EventStore, w: World, name: str, networks: tuple[UUID, ...] = ()
) -> Operation:
    command = DeployVm(
        account="a",
        name=name,
        zone_id=w.zone,
        template_id=w.template,
        spec=SPEC,
        network_ids=networks,
    )
    op_id = service.execute(command).aggregate_id
    op = store.load(op_id)
    assert isinstance(op, Operation)
    return op


def running_on(service: CommandService, store: EventStore, w: World, host: UUID, name: str) -> UUID:
    """A VM deployed on host and Running there, as the effectors would
    report it: its id."""
    op = deploy(service, store, w, name)
    service.execute(PlaceOperation(operation_id=op.id, host_id=host, pool_ids=(w.pool,)))
    for volume_id in op.params.volume_ids:
        service.execute(MarkVolumeCreated(volume_id=volume_id))
    service.execute(AdvanceOperation(operation_id=op.id))
    service.execute(MarkVmRunning(vm_id=op.resource_id))
    service.execute(AdvanceOperation(operation_id=op.id))
    done = store.load(op.id)
    assert isinstance(done, Operation) and done.status == "succeeded", done
    return op.resource_id


def vm_operation(service: CommandService, store: EventStore, kind: str, vm_id: UUID) -> Operation:
    op_id = service.execute(VmOperation(kind=kind, vm_id=vm_id)).aggregate_id  # type: ignore[arg-type]
    op = store.load(op_id)
    assert isinstance(op, Operation)
    return op


def host_of(store: EventStore, op: Operation) -> UUID | None:
    vm = store.load(op.resource_id)
    assert isinstance(vm, VirtualMachine)
    return vm.host_id


async def project(target: DatabaseTarget) -> None:
    """Bring the read models up to the log, once."""
    conn = await connect(target)
    try:
        await readmodel.prepare(conn, target.schema)
    finally:
        await conn.close()
    await Rebuild(target).run()


@pytest.fixture
async def candidates(pg_target: DatabaseTarget) -> AsyncIterator[CandidateSource]:
    pool = await create_pool(pg_target, max_size=2, single_reads=True)
    try:
        # No cache: each plan reads the rows as they are now.
        yield CandidateSource(pool, pg_target.schema, ttl_s=0)
    finally:
        await pool.close()


async def test_a_plan_on_rows_behind_the_log_goes_to_a_host_with_room(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    candidates: CandidateSource,
) -> None:
    w = build(service)
    await project(pg_target)  # the rows: both hosts empty
    request = PlacementRequest(
        vm_id=UUID(int=1), zone_id=w.zone, cpus=1, ram_mb=64, root_size_bytes=1 << 30
    )
    chosen = (await candidates.planner()).plan(request)
    assert not isinstance(chosen, Refusal)
    first = chosen.host_id
    (other,) = set(w.hosts) - {first}

    # Fill the planner's first choice while the read model does not follow.
    for i in range(2):
        op = deploy(service, store, w, f"fill{i}")
        service.execute(PlaceOperation(operation_id=op.id, host_id=first, pool_ids=(w.pool,)))
    assert (await candidates.planner()).plan(request) == chosen  # the rows still say room

    placer = Placer(service, store, candidates)
    op = deploy(service, store, w, "late")
    assert await placer.place(op, CONTEXT) is None
    assert host_of(store, op) == other

    # The log's view of the full host lasts only until its row catches up:
    # once the row is newer (more room, by overcommit), the row is used.
    service.execute(UpdateHostOvercommit(host_id=first, cpu_overcommit=2.0, ram_overcommit=1.0))
    still = (await candidates.planner()).plan(request)  # the log's view: full
    assert not isinstance(still, Refusal) and still.host_id == other
    await project(pg_target)
    op = deploy(service, store, w, "after")
    assert await placer.place(op, CONTEXT) is None
    assert host_of(store, op) == first
    loaded = store.load(first)
    assert isinstance(loaded, Host)
    assert loaded.cpus_used == 3


async def test_a_host_disabled_behind_the_rows_is_left_for_another(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    candidates: CandidateSource,
) -> None:
    w = build(service)
    await project(pg_target)
    request = PlacementRequest(
        vm_id=UUID(int=1), zone_id=w.zone, cpus=1, ram_mb=64, root_size_bytes=1 << 30
    )
    chosen = (await candidates.planner()).plan(request)
    assert not isinstance(chosen, Refusal)
    (other,) = set(w.hosts) - {chosen.host_id}
    service.execute(DisableHost(host_id=chosen.host_id))  # the row still says Enabled

    op = deploy(service, store, w, "vm")
    assert await Placer(service, store, candidates).place(op, CONTEXT) is None
    assert host_of(store, op) == other


async def test_room_released_behind_the_rows_is_not_refused(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    candidates: CandidateSource,
) -> None:
    w = build(service)
    for i in range(4):  # both hosts full, and so are their rows
        op = deploy(service, store, w, f"fill{i}")
        service.execute(
            PlaceOperation(operation_id=op.id, host_id=w.hosts[i % 2], pool_ids=(w.pool,))
        )
    await project(pg_target)
    assert await candidates.behind() == []
    # Room on one host, in the log only: the rows still say full.
    service.execute(
        UpdateHostOvercommit(host_id=w.hosts[0], cpu_overcommit=2.0, ram_overcommit=1.0)
    )
    assert await candidates.behind() == [w.hosts[0]]

    op = deploy(service, store, w, "late")
    assert await Placer(service, store, candidates).place(op, CONTEXT) is None
    assert host_of(store, op) == w.hosts[0]


async def test_a_refusal_not_about_the_host_or_pools_is_the_reason(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    candidates: CandidateSource,
) -> None:
    w = build(service)
    network = service.execute(
        CreateNetwork(account="a", name="n", zone_id=w.zone, cidr="10.9.0.0/30", isolation="none")
    ).aggregate_id
    await project(pg_target)
    placer = Placer(service, store, candidates)
    placed: list[Operation] = []
    reason: str | None = None
    for i in range(4):  # a /30 has two addresses at most
        op = deploy(service, store, w, f"v{i}", (network,))
        reason = await placer.place(op, CONTEXT)
        if reason is not None:
            break
        placed.append(op)
    assert placed, "not one VM got an address: the test no longer exercises a full network"
    assert reason is not None and "has no free address" in reason, reason
    # The refused placement reserved nothing.
    used = 0
    for host_id in w.hosts:
        host = store.load(host_id)
        assert isinstance(host, Host)
        used += host.cpus_used
    assert used == len(placed)


async def test_a_refusal_on_cached_rows_is_planned_again_on_fresh_ones(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    candidates: CandidateSource,
) -> None:
    w = build(service)
    for i in range(4):  # both hosts full
        op = deploy(service, store, w, f"fill{i}")
        service.execute(
            PlaceOperation(operation_id=op.id, host_id=w.hosts[i % 2], pool_ids=(w.pool,))
        )
    await project(pg_target)
    cached = CandidateSource(candidates.pool, pg_target.schema, ttl_s=3600)
    await cached.planner()  # the rows now: no room anywhere

    # Room appears, and the read model has it, but not the cached rows.
    service.execute(
        UpdateHostOvercommit(host_id=w.hosts[1], cpu_overcommit=2.0, ram_overcommit=1.0)
    )
    await project(pg_target)
    op = deploy(service, store, w, "late")
    assert await Placer(service, store, cached).place(op, CONTEXT) is None
    assert host_of(store, op) == w.hosts[1]

    # With no room at all, the refusal is the planner's reason.
    op = deploy(service, store, w, "more")
    service.execute(PlaceOperation(operation_id=op.id, host_id=w.hosts[1], pool_ids=(w.pool,)))
    await project(pg_target)
    op = deploy(service, store, w, "none")
    reason = await Placer(service, store, cached).place(op, CONTEXT)
    assert reason is not None and "cpu" in reason, reason


async def test_a_start_whose_last_host_filled_behind_the_rows_goes_elsewhere(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    candidates: CandidateSource,
) -> None:
    w = build(service)
    first, other = w.hosts
    vm = running_on(service, store, w, first, "vm")
    stop = vm_operation(service, store, "vm.stop", vm)
    service.execute(MarkVmStopped(vm_id=vm))
    service.execute(AdvanceOperation(operation_id=stop.id))
    await project(pg_target)  # the rows: both hosts empty, the VM last ran on first

    for i in range(2):  # its last host fills, the rows do not follow
        op = deploy(service, store, w, f"fill{i}")
        service.execute(PlaceOperation(operation_id=op.id, host_id=first, pool_ids=(w.pool,)))

    start = vm_operation(service, store, "vm.start", vm)
    assert await Placer(service, store, candidates).place(start, CONTEXT) is None
    assert host_of(store, start) == other


async def test_a_migration_to_a_host_filled_behind_the_rows_goes_to_one_with_room(
    pg_target: DatabaseTarget,
    store: EventStore,
    service: CommandService,
    candidates: CandidateSource,
) -> None:
    w = build(service, host_count=3)
    source = w.hosts[0]
    vm = running_on(service, store, w, source, "vm")
    await project(pg_target)
    request = PlacementRequest(
        vm_id=vm,
        zone_id=w.zone,
        cpus=1,
        ram_mb=64,
        root_size_bytes=1,
        avoid_host_ids=(source,),
    )
    chosen = (await candidates.planner()).plan(request)
    assert not isinstance(chosen, Refusal)
    target = chosen.host_id
    (room,) = set(w.hosts) - {source, target}
    for i in range(2):  # the planner's target fills, the rows do not follow
        op = deploy(service, store, w, f"fill{i}")
        service.execute(PlaceOperation(operation_id=op.id, host_id=target, pool_ids=(w.pool,)))

    migrate = vm_operation(service, store, "vm.migrate", vm)
    assert await Placer(service, store, candidates).place(migrate, CONTEXT) is None
    loaded = store.load(vm)
    assert isinstance(loaded, VirtualMachine)
    assert loaded.migration_target_id == room, loaded
