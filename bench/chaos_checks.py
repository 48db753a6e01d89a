"""bench/chaos.py's checks once the faults stopped: each returns the
violations it found, one line each (an empty list: the promise held)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from uuid import UUID

import asyncpg

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.catalog import AGGREGATES
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.operation import FINISHED, Operation
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import events_table, read_model
from cloud_engine.projections.replay import Rebuild
from cloud_engine.projections.status import wait_caught_up

ROOT = Path(__file__).resolve().parent.parent
VM_TRANSITIONAL = frozenset({"Starting", "Stopping", "Migrating", "Expunging"})
VOLUME_TRANSITIONAL = frozenset({"Creating", "Resizing"})
# What the read models and their rebuild are compared on.
COMPARED = "id, version, position, state, name, account, zone_id, created_on, modified_on, data"


class Seen(Protocol):
    seen: dict[str, list[int]]

    def caught_up(self, want: dict[str, int], timeout: float = 60) -> None: ...


def check_everything(
    store: EventStore,
    target: DatabaseTarget,
    env: dict[str, str],
    watcher: Seen,
    extra: Callable[[list[Aggregate]], list[str]] | None = None,
) -> list[str]:
    """Every check; `extra`, a setting's own (the lab's hypervisors), gets
    the same aggregates."""
    aggregates = load_all(store, target)
    print(f"checking {len(aggregates)} aggregates, {store.max_position()} events")
    violations = operations_ended(aggregates) + nothing_transitional(aggregates)
    violations += capacity_matches(aggregates) + pools_match(aggregates)
    violations += ips_allocated_once(aggregates) + tags_allocated_once(aggregates)
    if extra is not None:
        violations += extra(aggregates)
    violations += asyncio.run(read_models_equal_rebuild(target))
    violations += audit_verify(env)
    violations += consumer_saw_everything(target, watcher)
    return violations


def load_all(store: EventStore, target: DatabaseTarget) -> list[Aggregate]:
    async def ids() -> list[UUID]:
        conn = await connect(target)
        try:
            rows = await conn.fetch(
                f"SELECT DISTINCT originator_id FROM {events_table(target.schema)}"
            )
        finally:
            await conn.close()
        return [r[0] for r in rows]

    everything = asyncio.run(ids())
    loaded: list[Aggregate] = []
    for start in range(0, len(everything), 500):
        loaded += store.load_many(everything[start : start + 500]).values()
    return loaded


def operations_ended(aggregates: list[Aggregate]) -> list[str]:
    return [
        f"operation {a.id} ({a.kind}) is {a.status}"
        for a in aggregates
        if isinstance(a, Operation) and a.status not in FINISHED
    ]


def nothing_transitional(aggregates: list[Aggregate]) -> list[str]:
    found = []
    for a in aggregates:
        if isinstance(a, VirtualMachine) and a.state in VM_TRANSITIONAL:
            found.append(f"vm {a.id} left {a.state}")
        if isinstance(a, VirtualMachine) and a.is_unsettled():
            # A start or stop that timed out: convergence should have
            # recorded what its domain shows by now.
            found.append(f"vm {a.id} left unsettled (Error after a timed-out step)")
        if isinstance(a, Volume) and a.state in VOLUME_TRANSITIONAL:
            found.append(f"volume {a.id} left {a.state}")
    return found


def capacity_matches(aggregates: list[Aggregate]) -> list[str]:
    """Each host holds reservations for exactly the VMs placed on it (an
    unsettled VM, whose stop timed out, may still hold its last host: the
    check above reports it being left so)."""
    placed: dict[UUID, set[UUID]] = {}
    hosts = {a.id: a for a in aggregates if isinstance(a, Host)}
    for a in aggregates:
        if isinstance(a, VirtualMachine) and a.host_id is not None:
            placed.setdefault(a.host_id, set()).add(a.id)
        elif (
            isinstance(a, VirtualMachine)
            and a.is_unsettled()
            and a.last_host_id in hosts
            and a.id in hosts[a.last_host_id].reservations
        ):
            placed.setdefault(a.last_host_id, set()).add(a.id)
    found = []
    for host in aggregates:
        if not isinstance(host, Host):
            continue
        held, on_it = set(host.reservations), placed.get(host.id, set())
        if held != on_it:
            found.append(
                f"host {host.id}: reservations without a VM on it {sorted(held - on_it)},"
                f" VMs on it without one {sorted(on_it - held)}"
            )
    return found


def unsettled_vms(target: DatabaseTarget) -> int:
    """VMs in Error after a timed-out start or stop that convergence has not
    settled yet, as the read model shows them."""

    async def count() -> int:
        conn = await connect(target)
        try:
            return int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {read_model(target.schema, 'vm')}"
                    " WHERE state = 'Error' AND (data->>'unsettled')::boolean"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(count())


def pools_match(aggregates: list[Aggregate]) -> list[str]:
    """Each pool holds space for exactly the volumes on it (created or being
    created, not destroyed) and those moving to it. A volume in Error may
    hold it or not (a failed creation gives it back, a failed resize keeps
    the disk): it is left out of the comparison."""
    held_by: dict[UUID, set[UUID]] = {}
    failed = {a.id for a in aggregates if isinstance(a, Volume) and a.state == "Error"}
    for a in aggregates:
        if isinstance(a, Volume) and a.state not in ("Allocated", "Destroyed", "Error"):
            for pool_id in {a.pool_id, getattr(a, "moving_to", None)} - {None}:
                assert pool_id is not None
                held_by.setdefault(pool_id, set()).add(a.id)
    found = []
    for pool in aggregates:
        if not isinstance(pool, StoragePool):
            continue
        held, on_it = set(pool.reservations) - failed, held_by.get(pool.id, set())
        if held != on_it:
            found.append(
                f"pool {pool.id}: space held without a volume {sorted(held - on_it)},"
                f" volumes on it without space {sorted(on_it - held)}"
            )
    return found


def ips_allocated_once(aggregates: list[Aggregate]) -> list[str]:
    """Every address of a network is held by one IpAddress at most, and a
    network's allocations are exactly its unreleased IpAddresses."""
    live: dict[UUID, dict[str, list[UUID]]] = {}
    for a in aggregates:
        if isinstance(a, IpAddress) and a.state != "Released":
            live.setdefault(a.network_id, {}).setdefault(a.address, []).append(a.id)
    found = []
    for network in aggregates:
        if not isinstance(network, Network):
            continue
        holders = live.get(network.id, {})
        for address, ips in holders.items():
            if len(ips) > 1:
                found.append(f"network {network.id}: {address} held by {len(ips)} IPs {ips}")
        allocated = dict(network.allocated)
        recorded = {address: ips[0] for address, ips in holders.items()}
        if allocated != recorded:
            found.append(
                f"network {network.id}: allocations {len(allocated)} differ from its"
                f" unreleased IPs {len(recorded)}:"
                f" {sorted(set(allocated.items()) ^ set(recorded.items()))[:4]}"
            )
    return found


def tags_allocated_once(aggregates: list[Aggregate]) -> list[str]:
    """Every VLAN/VXLAN tag of a physical network is held by one network at
    most, and the physical network's allocations are exactly the tags its
    networks hold (a network gets one at its first VM's deploy and keeps it
    until shut down; the API destroys only networks without one)."""
    holders: dict[tuple[UUID, int], list[UUID]] = {}
    found = []
    for a in aggregates:
        if not isinstance(a, Network) or a.tag is None:
            continue
        if a.state == "Destroyed" or a.physical_network_id is None:
            found.append(f"network {a.id} ({a.state}) holds tag {a.tag}")
            continue
        holders.setdefault((a.physical_network_id, a.tag), []).append(a.id)
    found += [
        f"physical network {physical}: tag {tag} held by {len(ids)} networks {ids}"
        for (physical, tag), ids in holders.items()
        if len(ids) > 1
    ]
    for physical in aggregates:
        if not isinstance(physical, PhysicalNetwork):
            continue
        allocated = dict(physical.allocated_tags)
        recorded = {tag: ids[0] for (p, tag), ids in holders.items() if p == physical.id}
        if allocated != recorded:
            found.append(
                f"physical network {physical.id}: tags allocated {len(allocated)} differ from"
                f" those its networks hold {len(recorded)}:"
                f" {sorted(set(allocated.items()) ^ set(recorded.items()))[:4]}"
            )
    return found


async def checksums(conn: asyncpg.Connection, schema: str) -> dict[str, str]:
    sums = {}
    for aggregate_type in AGGREGATES:
        sums[aggregate_type] = await conn.fetchval(
            f"SELECT coalesce(md5(string_agg(r::text, '|' ORDER BY id)), '')"
            f" FROM (SELECT {COMPARED} FROM {read_model(schema, aggregate_type)}) r"
        )
    return sums


async def wait_projected(target: DatabaseTarget, position: int, timeout: float = 60) -> bool:
    conn = await connect(target)
    try:
        await asyncio.wait_for(wait_caught_up(conn, target.schema, position), timeout)
        return True
    except TimeoutError:
        return False
    finally:
        await conn.close()


async def read_models_equal_rebuild(target: DatabaseTarget) -> list[str]:
    conn = await connect(target)
    try:
        live = await checksums(conn, target.schema)
    finally:
        await conn.close()
    await Rebuild(target, processes=1).run()
    conn = await connect(target)
    try:
        rebuilt = await checksums(conn, target.schema)
    finally:
        await conn.close()
    return [
        f"read model {name} differs from its rebuild"
        for name in live
        if live[name] != rebuilt[name]
    ]


def audit_verify(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "cloud_engine.runner.cli", "audit", "verify"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode == 0:
        return []
    return [f"audit verify exited {done.returncode}: {(done.stdout + done.stderr)[-500:]}"]


def consumer_saw_everything(target: DatabaseTarget, watcher: Seen) -> list[str]:
    async def versions() -> dict[str, int]:
        conn = await connect(target)
        try:
            rows = await conn.fetch(
                "SELECT originator_id::text AS id, max(originator_version) AS v"
                f" FROM {events_table(target.schema)} GROUP BY originator_id"
            )
        finally:
            await conn.close()
        return {r["id"]: int(r["v"]) for r in rows}

    want = asyncio.run(versions())
    began = time.monotonic()
    watcher.caught_up(want)
    print(f"independent consumer caught up in {time.monotonic() - began:.1f} s")
    found = []
    for aggregate, last in want.items():
        first_seen = list(dict.fromkeys(watcher.seen.get(aggregate, [])))
        if first_seen != list(range(1, last + 1)):
            found.append(
                f"consumer saw {aggregate}'s versions {first_seen[:8]}... (len"
                f" {len(first_seen)}), the log has 1..{last}"
            )
    return found
