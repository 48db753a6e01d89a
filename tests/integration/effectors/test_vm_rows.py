"""A VM's plan from one query (effectors.vm_rows) on real PostgreSQL: the
same rows a read of each would give, one round trip for a plain VM, the
database asked for whatever the query does not hold, and the wait for the
VM's version kept."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest

from cloud_engine.bus.work import WorkItem, work_id
from cloud_engine.effectors.desired import (
    HostView,
    NetworkView,
    NicView,
    NotProjectedYet,
    PoolView,
    ReadModels,
    VmSize,
    VmView,
    VolumeView,
)
from cloud_engine.effectors.handlers.base import Reads
from cloud_engine.effectors.handlers.vm_plan import read_plan
from cloud_engine.effectors.vm_rows import VmRows
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from cloud_engine.projections import readmodel

pytestmark = pytest.mark.postgres

ZONE = uuid.uuid4()


class Counting:
    """The pool, counting the queries sent through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    async def fetch(self, *args: Any) -> list[asyncpg.Record]:
        self.queries += 1
        return list(await self.pool.fetch(*args))

    async def fetchrow(self, *args: Any) -> asyncpg.Record | None:
        self.queries += 1
        return await self.pool.fetchrow(*args)


@pytest.fixture
async def pool(pg_target: DatabaseTarget) -> AsyncIterator[asyncpg.Pool]:
    made = await create_pool(pg_target, max_size=2, single_reads=True)
    async with made.acquire() as conn:
        await readmodel.prepare(conn, pg_target.schema)
    yield made
    await made.close()


async def put(pool: asyncpg.Pool, models: ReadModels, aggregate_type: str, row: Any) -> None:
    data = msgspec.to_builtins(row)
    data.pop("id"), data.pop("version")
    await pool.execute(
        f"INSERT INTO {models.table(aggregate_type)}"
        " (id, version, position, state, zone_id, created_on, modified_on, data)"
        " VALUES ($1, $2, 0, $3, $5, now(), now(), $4::jsonb)"
        " ON CONFLICT (id) DO UPDATE SET version = $2, data = $4::jsonb",
        row.id,
        row.version,
        row.state,
        msgspec.json.encode(data).decode(),
        getattr(row, "zone_id", None),
    )


def host(name: str) -> HostView:
    return HostView(
        id=uuid.uuid4(),
        version=2,
        name=name,
        zone_id=ZONE,
        state="Enabled",
        libvirt_uri="test:///default",
    )


def vm_view(vm_id: UUID, *, version: int, on: HostView, ran: HostView, disks: Any) -> VmView:
    return VmView(
        id=vm_id,
        version=version,
        name="vm",
        zone_id=ZONE,
        state="Starting",
        spec=VmSize(cpus=1, ram_mb=64, root_disk_gb=1),
        host_id=on.id,
        last_host_id=ran.id,
        disks=disks,
    )


def item(vm_id: UUID, version: int) -> WorkItem:
    return WorkItem(
        work_id=work_id(vm_id, version),
        kind="vm.start",
        aggregate_id=vm_id,
        version=version,
        position=0,
    )


async def test_a_vm_plan_is_one_query_with_the_rows_each_read_gives(
    pool: asyncpg.Pool, pg_target: DatabaseTarget
) -> None:
    models = ReadModels(pool, pg_target.schema, wait_s=0.2)
    on, ran, other = host("on"), host("ran"), host("other")
    primary = PoolView(id=uuid.uuid4(), version=1, zone_id=ZONE, state="Up", url="/p")
    vm_id = uuid.uuid4()
    root = VolumeView(
        id=uuid.uuid4(), version=3, zone_id=ZONE, state="Ready", size_bytes=1, pool_id=primary.id
    )  # its row does not name the VM yet: the VM's list of disks does
    data = VolumeView(
        id=uuid.uuid4(),
        version=2,
        zone_id=ZONE,
        state="Ready",
        size_bytes=2,
        pool_id=primary.id,
        vm_id=vm_id,
        device_id=1,
    )
    elsewhere = msgspec.structs.replace(data, id=uuid.uuid4(), vm_id=uuid.uuid4())
    network = NetworkView(
        id=uuid.uuid4(),
        version=1,
        cidr="10.0.0.0/24",
        gateway="10.0.0.1",
        isolation="vlan",
        state="Implemented",
    )
    nic = NicView(
        id=uuid.uuid4(),
        version=1,
        vm_id=vm_id,
        network_id=network.id,
        address="10.0.0.5",
        mac="02:00:00:00:00:05",
        device_id=0,
        state="Reserved",
    )
    vm = vm_view(vm_id, version=4, on=on, ran=ran, disks={"0": root.id})
    for t, row in [
        *(("host", h) for h in (on, ran, other)),
        ("storage_pool", primary),
        *(("volume", v) for v in (root, data, elsewhere)),
        ("network", network),
        ("nic", nic),
        ("vm", vm),
    ]:
        await put(pool, models, t, row)

    # Each row VmRows holds is the one a lone read gives, as are its lists.
    rows = await VmRows.read(models, vm_id, 4)
    assert rows.vm() == await models.get(VmView, "vm", vm_id)
    for t, cls, row_id in [
        ("host", HostView, on.id),
        ("host", HostView, ran.id),
        ("host", HostView, other.id),  # not fetched: read from the database
        ("storage_pool", PoolView, primary.id),
        ("volume", VolumeView, root.id),
        ("volume", VolumeView, data.id),
        ("volume", VolumeView, elsewhere.id),
        ("network", NetworkView, network.id),
        ("nic", NicView, nic.id),
    ]:
        assert await rows.get(cls, t, row_id) == await models.get(cls, t, row_id), (t, row_id)
        assert await rows.get(cls, t, row_id) is not None
    assert await rows.get(HostView, "host", uuid.uuid4()) is None
    for t, cls in [("volume", VolumeView), ("nic", NicView)]:
        mine = await rows.where(cls, t, "vm_id", vm_id)
        assert mine == await models.where(cls, t, "vm_id", vm_id)
    assert [v.id for v in await rows.where(VolumeView, "volume", "vm_id", vm_id)] == [data.id]
    assert await rows.where(VolumeView, "volume", "vm_id", elsewhere.vm_id) == [elsewhere]  # type: ignore[arg-type]

    # The plan: one round trip (the last host is read: it ran elsewhere).
    counting = Counting(pool)
    plan = await read_plan(Reads(ReadModels(counting, pg_target.schema)), item(vm_id, 4))  # type: ignore[arg-type]
    assert plan is not None
    assert counting.queries == 1
    assert (plan.vm, plan.host, plan.last_host) == (vm, on, ran)
    assert plan.disks == ((msgspec.structs.replace(root, device_id=0), primary),)
    assert plan.nics == ((nic, network),)
    assert plan.zone_hosts == ()

    # A VXLAN network needs the zone's hosts: the query does not hold them.
    await put(pool, models, "network", msgspec.structs.replace(network, isolation="vxlan"))
    counting.queries = 0
    plan = await read_plan(Reads(ReadModels(counting, pg_target.schema)), item(vm_id, 4))  # type: ignore[arg-type]
    assert plan is not None
    assert counting.queries == 2
    assert sorted(h.id for h in plan.zone_hosts) == sorted(h.id for h in (on, ran, other))


async def test_the_plan_waits_for_the_vm_version(
    pool: asyncpg.Pool, pg_target: DatabaseTarget
) -> None:
    models = ReadModels(pool, pg_target.schema, wait_s=0.2)
    on = host("on")
    vm = vm_view(uuid.uuid4(), version=2, on=on, ran=on, disks={})
    await put(pool, models, "host", on)
    await put(pool, models, "vm", vm)
    with pytest.raises(NotProjectedYet, match="waiting for 3"):
        await read_plan(Reads(models), item(vm.id, 3))
    with pytest.raises(NotProjectedYet, match="at version None"):
        await read_plan(Reads(models), item(uuid.uuid4(), 1))
    plan = await read_plan(Reads(models), item(vm.id, 2))
    assert plan is not None and plan.host == on and plan.last_host is None
    # Another zone's VM: not this effector's.
    assert await read_plan(Reads(models, frozenset({uuid.uuid4()})), item(vm.id, 2)) is None


@pytest.mark.parametrize("state", ["Stopped", "Destroyed", "Expunging", "Error"])
async def test_a_start_the_log_has_moved_past_is_not_planned(
    pool: asyncpg.Pool, pg_target: DatabaseTarget, state: str
) -> None:
    """A vm.start work item read after the VM was stopped, destroyed or
    expunged (a backlog: the soak saw starts run 10 minutes late) starts
    nothing: the log says the VM is not to run."""
    models = ReadModels(pool, pg_target.schema, wait_s=0.2)
    on = host("on")
    vm_id = uuid.uuid4()
    await put(pool, models, "host", on)
    starting = vm_view(vm_id, version=4, on=on, ran=on, disks={})
    await put(pool, models, "vm", starting)
    assert await read_plan(Reads(models), item(vm_id, 4)) is not None
    await put(pool, models, "vm", msgspec.structs.replace(starting, version=7, state=state))
    assert await read_plan(Reads(models), item(vm_id, 4)) is None
