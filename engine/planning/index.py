"""One snapshot of candidates, arranged so that planning a VM touches few hosts.

Hosts are numbered by rank (their position in id order), so every set and
every tie-break in the hot loops works on small ints instead of UUIDs, whose
hashing and comparison run in Python. Enabled hosts are grouped by zone and
tag set: one subset test then stands for a whole group, and its hosts sorted
by free cpu and by free RAM let one bisection find (or count) the hosts with
enough of either.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from cloud_engine.engine.planning.candidates import HostCandidate, PoolCandidate
from cloud_engine.engine.planning.storage import PoolSet


class Group:
    """Enabled hosts of one zone sharing one tag set; positions in rank order."""

    __slots__ = (
        "by_cpu",
        "by_load",
        "by_ram",
        "cpu_by_ram",
        "cpu_free",
        "cpu_sorted",
        "cpu_total",
        "cpu_used",
        "load",
        "pools",
        "ram_by_cpu",
        "ram_free",
        "ram_sorted",
        "ram_total",
        "ram_used",
        "ranks",
        "ranks_by_cpu",
        "ranks_by_ram",
        "tags",
        "zone_id",
    )

    def __init__(self, zone_id: UUID, tags: frozenset[str]) -> None:
        self.zone_id = zone_id
        self.tags = tags
        self.ranks: list[int] = []
        self.cpu_total: list[int] = []
        self.cpu_used: list[int] = []
        self.cpu_free: list[int] = []
        self.ram_total: list[int] = []
        self.ram_used: list[int] = []
        self.ram_free: list[int] = []
        self.load: list[float] = []
        # The pools each host reaches (shared by the hosts of a cluster).
        self.pools: list[PoolSet] = []
        # Positions sorted by load, by free cpu and by free RAM (ties by rank),
        # and the free amounts in those orders, for bisection.
        self.by_load: list[int] = []
        self.by_cpu: list[int] = []
        self.cpu_sorted: list[int] = []
        self.ranks_by_cpu: list[int] = []
        self.ram_by_cpu: list[int] = []
        self.by_ram: list[int] = []
        self.ram_sorted: list[int] = []
        self.ranks_by_ram: list[int] = []
        self.cpu_by_ram: list[int] = []

    def add(self, rank: int, host: HostCandidate, pools: PoolSet) -> int:
        self.ranks.append(rank)
        self.cpu_total.append(host.cpu_total)
        self.cpu_used.append(host.cpu_used)
        # Host.reserve refuses iff used + asked > total, so asked <= free fits.
        self.cpu_free.append(host.cpu_total - host.cpu_used)
        self.ram_total.append(host.ram_total_mb)
        self.ram_used.append(host.ram_used_mb)
        self.ram_free.append(host.ram_total_mb - host.ram_used_mb)
        self.load.append(_load(host))
        self.pools.append(pools)
        return len(self.ranks) - 1

    def finish(self) -> None:
        ranks, load, cpu, ram = self.ranks, self.load, self.cpu_free, self.ram_free
        # Least loaded first: dispersing stops once the load already there
        # exceeds the best load found after placement.
        self.by_load = sorted(range(len(ranks)), key=lambda k: (load[k], ranks[k]))
        self.by_cpu = sorted(range(len(ranks)), key=lambda k: (cpu[k], ranks[k]))
        self.cpu_sorted = [cpu[k] for k in self.by_cpu]
        self.ranks_by_cpu = [ranks[k] for k in self.by_cpu]
        self.ram_by_cpu = [ram[k] for k in self.by_cpu]
        self.by_ram = sorted(range(len(ranks)), key=lambda k: (ram[k], ranks[k]))
        self.ram_sorted = [ram[k] for k in self.by_ram]
        self.ranks_by_ram = [ranks[k] for k in self.by_ram]
        self.cpu_by_ram = [cpu[k] for k in self.by_ram]


def _load(host: HostCandidate) -> float:
    if host.cpu_total <= 0 or host.ram_total_mb <= 0:
        return float("inf")
    return max(host.cpu_used / host.cpu_total, host.ram_used_mb / host.ram_total_mb)


class ZoneIndex:
    __slots__ = ("by_state", "groups", "groups_by_load", "ranks")

    def __init__(self) -> None:
        # Created while walking hosts in rank order, so sorted by first rank:
        # first-fit stops at the first group starting after its best host.
        self.groups: list[Group] = []
        # By least loaded host: dispersing stops at the first group whose
        # least loaded host is already above the best load after placement.
        self.groups_by_load: list[Group] = []
        self.ranks: list[int] = []
        # Hosts that are not Enabled, by state; they never enter a group.
        self.by_state: dict[str, list[int]] = {}


class CandidateIndex:
    """Immutable once built; build a new one for a new snapshot."""

    def __init__(self, hosts: Iterable[HostCandidate], pools: Iterable[PoolCandidate]) -> None:
        self.hosts: list[HostCandidate] = sorted(hosts, key=lambda h: h.id.int)
        self.ids: list[UUID] = [h.id for h in self.hosts]
        self.rank_of: dict[UUID, int] = {host_id: r for r, host_id in enumerate(self.ids)}
        self._cluster_pools: dict[UUID, list[PoolCandidate]] = {}
        self._zone_pools: dict[UUID, list[PoolCandidate]] = {}
        # A host's local pools: only that host reaches them.
        self._host_pools: dict[UUID, list[PoolCandidate]] = {}
        for pool in pools:
            if pool.state != "Enabled":
                continue
            if pool.host_id is not None:
                self._host_pools.setdefault(pool.host_id, []).append(pool)
            elif pool.cluster_id is None:
                self._zone_pools.setdefault(pool.zone_id, []).append(pool)
            else:
                self._cluster_pools.setdefault(pool.cluster_id, []).append(pool)
        self._pool_sets: dict[tuple[UUID, UUID, UUID | None], PoolSet] = {}
        self.zones: dict[UUID, ZoneIndex] = {}
        # rank -> (group, position in group), for enabled hosts only.
        self.where: dict[int, tuple[Group, int]] = {}
        groups: dict[tuple[UUID, frozenset[str]], Group] = {}
        for rank, host in enumerate(self.hosts):
            zone = self.zones.get(host.zone_id)
            if zone is None:
                zone = self.zones[host.zone_id] = ZoneIndex()
            zone.ranks.append(rank)
            if host.state != "Enabled":
                zone.by_state.setdefault(host.state, []).append(rank)
                continue
            key = (host.zone_id, host.tags)
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group(host.zone_id, host.tags)
                zone.groups.append(group)
            reach = self.pool_set(host.zone_id, host.cluster_id, host.id)
            self.where[rank] = (group, group.add(rank, host, reach))
        for group in groups.values():
            group.finish()
        for zone in self.zones.values():
            zone.groups_by_load = sorted(zone.groups, key=lambda g: g.load[g.by_load[0]])

    def pool_set(self, zone_id: UUID, cluster_id: UUID, host_id: UUID | None = None) -> PoolSet:
        """The enabled pools a host of this zone and cluster reaches: one set
        per cluster, shared by its hosts, except for a host with local pools
        of its own (remembered per host: the storage answers are per set)."""
        local = [] if host_id is None else self._host_pools.get(host_id, [])
        # A local pool recorded in another zone or cluster is a data error;
        # it is not reachable from here either way.
        local = [p for p in local if p.zone_id == zone_id and p.cluster_id == cluster_id]
        key = (zone_id, cluster_id, host_id if local else None)
        found = self._pool_sets.get(key)
        if found is None:
            own = [p for p in self._cluster_pools.get(cluster_id, ()) if p.zone_id == zone_id]
            shared = self._zone_pools.get(zone_id, [])
            found = self._pool_sets[key] = PoolSet([*own, *shared, *local])
        return found
