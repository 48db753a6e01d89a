"""Every answering host has the shared storage pools of its cluster and zone:
defined, started and autostarted, whether or not a VM ever ran there.

The work kinds define a pool on a host only when a volume or VM first
lands there. That is not enough: a host's agent writes its heartbeat into
every pool its libvirtd has (automation/heartbeat.py), so a host with none
has no heartbeat, and once fenced (a power cut) it would stay Down although
it is back and healthy. So the reconciler's round, for every host whose
libvirt answered it, makes sure of them; a pool added to a cluster reaches
its hosts by the next round. CloudStack does the same when a host joins a
cluster with cluster-wide primary storage, and when such a pool is added.

A host that does not answer gets nothing: liveness keeps its meaning (its
agent writes no heartbeat unless it runs). One listing of the host's active
pools per round; only a missing or stopped one goes through ensure_pool,
under the same lock as the work's. A pool that cannot be made ready is
logged once per outage (with its first error) and returned; the
reconciler publishes it once an outage as `drift.host_pool`, which the
engine records on the host (host.shared_pool_unavailable). The next good
round logs its recovery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from uuid import UUID, uuid5

import libvirt
import msgspec
import structlog

from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.effectors.desired import HostView, PoolView
from cloud_engine.effectors.drift import DRIFT_IDS
from cloud_engine.effectors.handlers.base import shared
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError
from cloud_engine.effectors.mapping import Unsupported, pool_spec
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.storage.pools import StorageError, ensure_pool

log = structlog.get_logger("effectors.host_pools")


class PoolTrouble(msgspec.Struct, frozen=True, kw_only=True):
    """A shared pool the host should have and has not."""

    host_id: UUID
    pool_id: UUID
    error: str
    since: str  # when this outage began (ISO time): stable while it lasts


def trouble_id(trouble: PoolTrouble) -> UUID:
    # The outage's start makes it: one report while it lasts (the engine
    # records it once), a new one for the next outage.
    return uuid5(DRIFT_IDS, f"{trouble.host_id}:{trouble.pool_id}:drift.host_pool:{trouble.since}")


def trouble_result(trouble: PoolTrouble, effector: str) -> EffectorResult:
    """The report of it: recorded as host.shared_pool_unavailable."""
    return EffectorResult(
        work_id=trouble_id(trouble),
        kind="drift.host_pool",
        aggregate_id=trouble.pool_id,
        version=0,
        outcome="succeeded",
        host_id=trouble.host_id,
        observed=trouble.error,
        expected="active",
        effector=effector,
    )


def shared_pools_of(host: HostView, pools: Iterable[PoolView]) -> list[PoolView]:
    """The shared pools the host must have: its cluster's, and its zone's
    zone-wide ones (a host-local pool is its own work's business)."""
    mine = [
        p
        for p in pools
        if p.shared
        and p.zone_id == host.zone_id
        and (p.scope == "zone" or (p.cluster_id is not None and p.cluster_id == host.cluster_id))
    ]
    return sorted(mine, key=lambda p: p.id)


def _active_pools(conn: libvirt.virConnect) -> set[str]:
    flags = libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
    return {p.name() for p in conn.listAllStoragePools(flags)}


class HostPools:
    def __init__(self, names: Names) -> None:
        self.names = names
        # Pools this process defined or started on a host (a figure for tests
        # and logs: each is a pool a host lacked).
        self.made_ready = 0
        # (host, pool) -> (since, first error) of each outage in progress.
        self._failing: dict[tuple[UUID, UUID], tuple[str, str]] = {}

    def failing(self) -> list[PoolTrouble]:
        return [
            PoolTrouble(host_id=h, pool_id=p, error=error, since=since)
            for (h, p), (since, error) in sorted(self._failing.items())
        ]

    def ensure(
        self, hv: Hypervisor, host: HostView, pools: Sequence[PoolView]
    ) -> list[PoolTrouble]:
        """Blocking (run it in a thread). The troubles of this round; a
        HypervisorError of the listing itself (the host stopped answering)
        is raised."""
        wanted = shared_pools_of(host, pools)
        ids = {p.id for p in wanted}
        for key in [k for k in self._failing if k[0] == host.id and k[1] not in ids]:
            del self._failing[key]  # no longer the host's (e.g. it moved cluster)
        if not wanted:
            return []
        active = hv.call("list pools", _active_pools, attempts=1)
        troubles: list[PoolTrouble] = []
        for pool in wanted:
            name = self.names.pool(pool.id)
            if name not in active:
                error = self._make_ready(hv, host, pool, name)
                if error is not None:
                    troubles.append(self._failed(host, pool, error))
                    continue
            if self._failing.pop((host.id, pool.id), None) is not None:
                log.info("shared_pool_ready_again", host=host.name, pool_id=str(pool.id))
        return troubles

    def _make_ready(self, hv: Hypervisor, host: HostView, pool: PoolView, name: str) -> str | None:
        try:
            spec = pool_spec(self.names, pool)
            with shared(hv.uri, "pool", name):
                # Once: the next round tries again, and a retry would cost
                # the round seconds and the host's connection each time.
                state = ensure_pool(hv, spec, attempts=1)
        except (Unsupported, StorageError, HypervisorError) as e:
            return str(e)
        if not state.active:
            return f"storage pool {name!r} is defined but not active"
        self.made_ready += 1
        log.info("shared_pool_made_ready", host=host.name, pool_id=str(pool.id), path=spec.path)
        return None

    def _failed(self, host: HostView, pool: PoolView, error: str) -> PoolTrouble:
        key = (host.id, pool.id)
        known = self._failing.get(key)
        if known is None:
            known = self._failing[key] = (datetime.now(UTC).isoformat(), error)
            # Once per outage: the round repeats every interval.
            log.warning(
                "shared_pool_not_ready",
                host=host.name,
                host_id=str(host.id),
                pool_id=str(pool.id),
                error=error,
            )
        return PoolTrouble(host_id=host.id, pool_id=pool.id, error=error, since=known[0])
