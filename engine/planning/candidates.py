"""What the DeploymentPlanner reads and what it answers.

Candidates are snapshots of hosts and pools with their capacity already scaled
by overcommit, so the planner compares plain integers. Build them from the
aggregates with host_candidate() and pool_candidate(): those use the very
arithmetic Host.reserve and StoragePool.reserve use, which is what lets the
planner promise that a reservation on the host it picked will not be refused
for capacity (in the same snapshot).

The answers, Placement and Refusal, are tagged Structs (field "outcome") so a
saga can record either in an event and an API can return it as JSON.
"""

from __future__ import annotations

import math
from typing import Annotated, Final, Literal
from uuid import UUID

import msgspec

from cloud_engine.engine.fabric.capacity import overcommitted
from cloud_engine.engine.fabric.host import Host, HostState
from cloud_engine.engine.fabric.storage_pool import StoragePool, StoragePoolState

Strategy = Literal["first-fit", "dispersing"]
STRATEGIES: Final[tuple[Strategy, ...]] = ("first-fit", "dispersing")
AffinityKind = Literal["affinity", "anti-affinity"]
# In the order the planner checks them, cheapest first, which is also the
# order a refusal attributes each host to the first constraint it breaks.
# Storage comes last: it is answered per cluster, by a small packing search.
Constraint = Literal[
    "unknown",
    "zone",
    "state",
    "host-tags",
    "cpu",
    "ram",
    "avoided",
    "anti-affinity",
    "affinity",
    "storage",
]


class VolumeRequest(msgspec.Struct, frozen=True, kw_only=True):
    size_bytes: Annotated[int, msgspec.Meta(ge=1)]
    storage_tags: tuple[str, ...] = ()


class PlacementRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One VM to place: its compute needs, its disks and its placement rules.

    host_tags are the VM's VmSpec.tags. avoid_host_ids keeps hosts out (the
    current host during a migration); required_host_id names the only host to
    consider (an operator's migration target), which is still checked.
    """

    vm_id: UUID
    zone_id: UUID
    cpus: Annotated[int, msgspec.Meta(ge=1)]
    ram_mb: Annotated[int, msgspec.Meta(ge=1)]
    root_size_bytes: Annotated[int, msgspec.Meta(ge=1)]
    root_storage_tags: tuple[str, ...] = ()
    data_volumes: tuple[VolumeRequest, ...] = ()
    host_tags: tuple[str, ...] = ()
    affinity_groups: tuple[str, ...] = ()
    avoid_host_ids: tuple[UUID, ...] = ()
    required_host_id: UUID | None = None

    @property
    def volumes(self) -> tuple[VolumeRequest, ...]:
        """Root first, then the data volumes: the order of Placement.pool_ids."""
        root = VolumeRequest(size_bytes=self.root_size_bytes, storage_tags=self.root_storage_tags)
        return (root, *self.data_volumes)


# Candidates hold only ids, numbers and tags, so they can form no reference
# cycle: gc=False keeps tens of thousands of them out of the cyclic garbage
# collector's full passes, which would otherwise stall a plan now and then.
class HostCandidate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A host as the planner sees it.

    cpu_total is the number of whole vCPUs reservable after overcommit (the
    floor of the Decimal product): a VM asks for whole vCPUs, so 3 cores at
    1.5 give 4, exactly as Host.reserve counts them.
    """

    id: UUID
    zone_id: UUID
    pod_id: UUID
    cluster_id: UUID
    state: HostState
    cpu_total: int
    cpu_used: int
    ram_total_mb: int
    ram_used_mb: int
    tags: frozenset[str] = frozenset()


class PoolCandidate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A primary storage pool; cluster_id is None for a zone-scoped pool,
    host_id names the only host reaching a host-scoped (local) one."""

    id: UUID
    zone_id: UUID
    cluster_id: UUID | None
    state: StoragePoolState
    total_bytes: int
    used_bytes: int
    tags: frozenset[str] = frozenset()
    host_id: UUID | None = None


class AffinityRule(msgspec.Struct, frozen=True, kw_only=True):
    """An affinity group as the planner applies it: its rule, and in
    host_ids the hosts the group's other members occupy right now. Not the
    AffinityGroup aggregate (engine/operations/affinity.py), which records
    the members; the placer builds one of these from it for each plan."""

    name: str
    kind: AffinityKind
    strict: bool
    host_ids: tuple[UUID, ...] = ()


class Elimination(msgspec.Struct, frozen=True, kw_only=True):
    """How many hosts one constraint ruled out, a few of them, and why."""

    constraint: Constraint
    count: int
    host_ids: tuple[UUID, ...]
    detail: str


class Placement(msgspec.Struct, frozen=True, kw_only=True, tag="placement", tag_field="outcome"):
    """The chosen host and one pool per volume, in PlacementRequest.volumes order.

    relaxed names the best-effort affinity groups that could not be honoured.
    """

    vm_id: UUID
    host_id: UUID
    pool_ids: tuple[UUID, ...]
    strategy: Strategy
    relaxed: tuple[str, ...] = ()


class Refusal(msgspec.Struct, frozen=True, kw_only=True, tag="refusal", tag_field="outcome"):
    """Why no host fits. Each considered host is counted once, under the first
    constraint (in Constraint order) it breaks, so the counts add up to
    hosts_considered. A named host (required_host_id) is the exception: it
    is the only one considered, and every constraint it breaks is listed."""

    vm_id: UUID
    hosts_considered: int
    eliminations: tuple[Elimination, ...]
    message: str


PlanResult = Placement | Refusal


def reservable_cpus(cores: int, overcommit: float) -> int:
    """Whole vCPUs Host.reserve accepts. Not Host.cpus_total: that float can
    round 3.9999999999999999 up to 4.0, while reserve compares against the
    exact Decimal."""
    return math.floor(overcommitted(cores, overcommit))


def host_candidate(host: Host) -> HostCandidate:
    cpu_total = reservable_cpus(host.cpu_cores, host.cpu_overcommit)
    return HostCandidate(
        id=host.id,
        zone_id=host.zone_id,
        pod_id=host.pod_id,
        cluster_id=host.cluster_id,
        # A host not known alive takes nothing, whatever its admin state.
        state=host.state if host.liveness == "Up" else "Down",
        cpu_total=cpu_total,
        cpu_used=host.cpus_used,
        ram_total_mb=host.ram_total_mb,
        ram_used_mb=host.ram_used_mb,
        tags=frozenset(host.tags),
    )


def pool_candidate(pool: StoragePool) -> PoolCandidate:
    return PoolCandidate(
        id=pool.id,
        zone_id=pool.zone_id,
        cluster_id=pool.cluster_id,
        state=pool.state,
        total_bytes=pool.total_bytes,
        used_bytes=pool.used_bytes,
        tags=frozenset(pool.tags),
        host_id=pool.host_id,
    )
