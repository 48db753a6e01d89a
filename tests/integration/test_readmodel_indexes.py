"""Read-model indexes: every list filter has one, prepare and a rebuild
create them (a rebuild after its bulk load, under the live names after the
swap), and the queries the API sends are planned on them without a sort."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

import asyncpg
import pytest

from cloud_engine.api.cursor import Cursor
from cloud_engine.api.queries import fetch_page
from cloud_engine.api.resources import BY_TYPE, Filter
from cloud_engine.effectors.desired import ReadModels
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.infra import tables
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.projections import readmodel
from cloud_engine.projections.replay import Rebuild

pytestmark = pytest.mark.postgres

SPEC = VmSpec(cpus=1, ram_mb=256, root_disk_gb=1)


async def _connect(target: DatabaseTarget) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=target.host, port=target.port, user=target.user, database=target.dbname
    )


def expected_indexes() -> dict[str, set[str]]:
    """Every rm_* table's index names, key included."""
    return {
        tables.table_name(t): {
            f"{tables.table_name(t)}_pkey",
            *(f"{tables.table_name(t)}_{i.suffix}" for i in readmodel.indexes(t)),
        }
        for t in readmodel.AGGREGATES
    }


async def present_indexes(conn: asyncpg.Connection, schema: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for r in await conn.fetch(
        "SELECT tablename, indexname FROM pg_indexes"
        " WHERE schemaname = $1 AND tablename LIKE 'rm\\_%' AND tablename <> 'rm_positions'",
        schema,
    ):
        found.setdefault(r["tablename"], set()).add(r["indexname"])
    return found


def test_every_list_filter_has_an_index():
    for resource in BY_TYPE.values():
        keys = readmodel.LIST_KEYS.get(resource.type, ())
        for f in resource.filters:
            if f.name == "account" and resource.parent is not None:
                # Owned through the parent: the account is the parent's row's.
                assert "account" not in keys
                continue
            assert (f.column or f.name) in keys, (resource.type, f.name)
            if f.column is not None:
                assert f.column in readmodel.COLUMN_KEYS
        # Nothing indexed that no list filters on (each index costs every
        # write), but for the effectors' lookups.
        assert set(keys) <= {f.column or f.name for f in resource.filters}, resource.type
        assert not set(keys) & set(readmodel.LOOKUP_KEYS.get(resource.type, ()))
    assert set(readmodel.LIST_KEYS) <= set(BY_TYPE)


async def test_prepare_creates_missing_indexes_and_is_idempotent(pg_target: DatabaseTarget):
    conn = await _connect(pg_target)
    other = await _connect(pg_target)
    try:
        # Two components starting at once on an empty schema.
        await asyncio.gather(
            readmodel.prepare(conn, pg_target.schema), readmodel.prepare(other, pg_target.schema)
        )
        assert await present_indexes(conn, pg_target.schema) == expected_indexes()

        # A table from before the indexes existed gets them on the next start.
        await conn.execute(f'DROP INDEX "{pg_target.schema}".rm_vm_by_host_id')
        await conn.execute(f'DROP INDEX "{pg_target.schema}".rm_vm_by_created')
        await readmodel.prepare(conn, pg_target.schema)
        await readmodel.prepare(conn, pg_target.schema)
        assert await present_indexes(conn, pg_target.schema) == expected_indexes()
    finally:
        await conn.close()
        await other.close()


def store_vms(store: EventStore, count: int) -> list[VirtualMachine]:
    """VMs over 40 hosts, 4 accounts and 2 templates, half of them Running,
    each with a NIC and an attached root volume (a VM's page lists both)."""
    zone = uuid.uuid4()
    hosts = [uuid.uuid4() for _ in range(40)]
    templates = [uuid.uuid4() for _ in range(2)]
    network, pool = uuid.uuid4(), uuid.uuid4()
    vms: list[VirtualMachine] = []
    pending: list[Any] = []
    for n in range(count):
        vm = VirtualMachine.create(f"acct-{n % 4}", f"vm{n}", zone, templates[n % 2], SPEC)
        vm.place(hosts[n % len(hosts)], uuid.uuid4())
        if n % 2:
            vm.start_requested(hosts[n % len(hosts)])
            vm.mark_running()
        nic = Nic.create(vm_id=vm.id, network_id=network, device_id=0)
        root = Volume.create(vm.account, f"vm{n}-root", zone, 1 << 30, "root", vm.template_id)
        root.create_requested(pool)
        root.created()
        root.attach(vm.id, 0)
        pending.extend([*vm.collect_events(), *nic.collect_events(), *root.collect_events()])
        vms.append(vm)
        if len(pending) >= 500:
            store.append(pending)
            pending = []
    if pending:
        store.append(pending)
    return vms


class Captured:
    """Stands in for the API's pool: keeps the SQL fetch_page would send."""

    sql = ""
    args: tuple[object, ...] = ()

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        self.sql, self.args = sql, args
        return []


async def plan_of(
    conn: asyncpg.Connection,
    schema: str,
    filters: list[tuple[str, object]],
    after: Cursor | None = None,
) -> dict[str, Any]:
    resource = BY_TYPE["vm"]
    by_name = {f.name: f for f in resource.filters}
    chosen = [(by_name.get(name, Filter(name, "text", name)), v) for name, v in filters]
    captured = Captured()
    await fetch_page(captured, schema, resource, chosen, after=after, limit=50)  # type: ignore[arg-type]
    text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {captured.sql}", *captured.args)
    plan: dict[str, Any] = json.loads(text)[0]["Plan"]
    return plan


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(nodes(child))
    return found


async def test_rebuild_builds_indexes_the_list_queries_use(
    pg_target: DatabaseTarget, store: EventStore
):
    vms = store_vms(store, 4_000)
    conn = await _connect(pg_target)
    try:
        schema = pg_target.schema
        await readmodel.prepare(conn, schema)  # live tables with their indexes
        await Rebuild(pg_target, processes=1).run()
        # Under the live names, no shadow left; a second rebuild swaps again.
        assert await present_indexes(conn, schema) == expected_indexes()
        await Rebuild(pg_target, processes=1).run()
        assert await present_indexes(conn, schema) == expected_indexes()
        await readmodel.prepare(conn, schema)  # finds everything in place
        assert await present_indexes(conn, schema) == expected_indexes()
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".rm_vm') == 4_000

        middle = sorted(vms, key=lambda v: (v.created_on, v.id))[2_000]
        after = Cursor(middle.created_on, middle.id, "")
        host = vms[7].host_id
        # (filters, cursor, index expected or None for any, read in index order)
        cases: list[tuple[list[tuple[str, object]], Cursor | None, str | None, bool]] = [
            ([], None, "rm_vm_by_created", True),
            ([], after, "rm_vm_by_created", True),
            ([("account", "acct-1")], after, "rm_vm_by_account", True),
            ([("state", "Running"), ("account", "acct-1")], after, None, True),
            ([("template_id", vms[1].template_id)], after, None, True),
            # 100 rows match: fetching them all and sorting is as good.
            ([("host_id", host)], None, "rm_vm_by_host_id", False),
            ([("host_id", host)], after, "rm_vm_by_host_id", False),
            ([("zone_id", vms[0].zone_id), ("host_id", host)], None, "rm_vm_by_host_id", False),
            ([("name", "vm77")], None, "rm_vm_by_name", False),
        ]
        # A VM's NICs and volumes (api/resources.Child) are read per row
        # from their own vm_id indexes.
        children = {"rm_nic_by_vm_id", "rm_volume_by_vm_id"}
        for filters, cursor, expected, ordered in cases:
            plan = await plan_of(conn, schema, filters, cursor)
            kinds = [n["Node Type"] for n in nodes(plan)]
            everything = {n["Index Name"] for n in nodes(plan) if "Index Name" in n}
            assert children <= everything, (filters, everything)
            used = everything - children
            assert "Seq Scan" not in kinds and used, (filters, kinds)
            if expected is not None:
                assert used == {expected}, (filters, used)
            if ordered:
                # The page is read in keyset order straight off the index.
                assert "Sort" not in kinds, (filters, kinds)
    finally:
        await conn.close()


async def test_effector_lookups_are_planned_on_their_index(pg_target: DatabaseTarget):
    """Every key the effectors may look rows up by has its index, and the
    query's generic plan (asyncpg prepares it) can use it: with data ->> $1
    it could not (PostgreSQL planned each execution anew, or scanned)."""
    conn = await _connect(pg_target)
    try:
        schema = pg_target.schema
        await readmodel.prepare(conn, schema)
        models = ReadModels(None, schema)  # type: ignore[arg-type]  # only the SQL is asked
        await conn.execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
        for aggregate_type in readmodel.AGGREGATES:
            table = tables.table_name(aggregate_type)
            for key, many in itertools.product(readmodel.indexed_keys(aggregate_type), (0, 1)):
                # many: where_in's = ANY of a list (the reconciler's volumes of a host's VMs).
                sql = models.where_sql(aggregate_type, key, many=bool(many))
                await conn.execute(f"PREPARE lookup AS {sql}")
                value = f"'{{{uuid.uuid4()},{uuid.uuid4()}}}'" if many else f"'{uuid.uuid4()}'"
                text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE lookup({value})")
                await conn.execute("DEALLOCATE lookup")
                plan = json.loads(text)[0]["Plan"]
                used = {n["Index Name"] for n in nodes(plan) if "Index Name" in n}
                assert used == {f"{table}_by_{key}"}, (aggregate_type, key, many, plan)
        with pytest.raises(ValueError, match="no index on kind"):
            models.where_sql("vm", "kind")
    finally:
        await conn.close()
