"""The hot loops: find the best host for one request in one zone.

Every check is an int comparison or a small-set lookup, cheapest first; the
storage answer (per cluster, remembered for the plan) is asked only for a host
that would beat the best so far, and by dispersing only for its winner unless
that winner's pools do not fit. A group is skipped whole when its tags do not
match, and walked through only its few hosts with enough cpu or RAM (found by
bisection) when those are scarce: walking it by rank or by load would pass all
the others first.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from typing import Final
from uuid import UUID

from cloud_engine.engine.planning.index import CandidateIndex, Group, ZoneIndex
from cloud_engine.engine.planning.rules import Ask
from cloud_engine.engine.planning.storage import PoolSet

# (rank of the chosen host, pool id per volume)
Found = tuple[int, tuple[UUID, ...]]

_NO_RANK: Final = sys.maxsize
_NO_POOLS: Final[tuple[UUID, ...]] = ()
# Fewer than one host in _SCARCE with enough of a resource counts as scarce.
_SCARCE: Final = 8


def _scarce(g: Group, c: int, r: int) -> list[int] | None:
    """Positions of the hosts with enough of the scarcer resource, or None
    when both are plentiful enough for a plain walk."""
    n = len(g.ranks)
    cpu_ok = n - bisect_left(g.cpu_sorted, c)
    ram_ok = n - bisect_left(g.ram_sorted, r)
    if cpu_ok <= ram_ok:
        return g.by_cpu[n - cpu_ok :] if cpu_ok * _SCARCE <= n else None
    return g.by_ram[n - ram_ok :] if ram_ok * _SCARCE <= n else None


def first_fit(zone: ZoneIndex, ask: Ask, excluded: set[int]) -> Found | None:
    c, r, need = ask.cpus, ask.ram, ask.tags
    best_rank, best_pools = _NO_RANK, _NO_POOLS
    for g in zone.groups:
        ranks = g.ranks
        if ranks[0] >= best_rank:
            break
        if not need <= g.tags:
            continue
        few = _scarce(g, c, r)
        if few is not None:
            few.sort()  # positions are in rank order
        cpu, ram, reach = g.cpu_free, g.ram_free, g.pools
        for k in range(len(ranks)) if few is None else few:
            rank = ranks[k]
            if rank >= best_rank:
                break
            if cpu[k] >= c and ram[k] >= r and rank not in excluded:
                pools = ask.storage(reach[k])
                if not isinstance(pools, str):
                    best_rank, best_pools = rank, pools
                    break
    return None if best_rank == _NO_RANK else (best_rank, best_pools)


def dispersing(zone: ZoneIndex, ask: Ask, excluded: set[int]) -> Found | None:
    # Storage rarely decides, and a VM with several disks costs a small packing
    # search per cluster: first pick the winner ignoring storage and ask only
    # for its pools. Only if those do not fit, walk again asking each
    # contender's storage.
    for eager in (False, True):
        hit = _least_loaded(zone, ask, excluded, eager)
        if hit is None:
            return None
        rank, reach = hit
        pools = ask.storage(reach)
        if not isinstance(pools, str):
            return rank, pools
    return None


def _least_loaded(
    zone: ZoneIndex, ask: Ask, excluded: set[int], eager: bool
) -> tuple[int, PoolSet] | None:
    c, r, need = ask.cpus, ask.ram, ask.tags
    best_score, best_rank, best_reach = float("inf"), _NO_RANK, None
    for g in zone.groups_by_load:
        load = g.load
        # Placing adds load, so a host already above the best cannot win.
        if load[g.by_load[0]] > best_score:
            break
        if not need <= g.tags:
            continue
        few = _scarce(g, c, r)
        if few is not None:
            few.sort(key=load.__getitem__)
        ranks, cpu, ram, reach = g.ranks, g.cpu_free, g.ram_free, g.pools
        cpu_used, cpu_total, ram_used, ram_total = g.cpu_used, g.cpu_total, g.ram_used, g.ram_total
        for k in g.by_load if few is None else few:
            if load[k] > best_score:
                break
            if cpu[k] >= c and ram[k] >= r and ranks[k] not in excluded:
                a = (cpu_used[k] + c) / cpu_total[k]
                b = (ram_used[k] + r) / ram_total[k]
                score = a if a > b else b
                if score < best_score or (score == best_score and ranks[k] < best_rank):
                    if eager and isinstance(ask.storage(reach[k]), str):
                        continue
                    best_score, best_rank, best_reach = score, ranks[k], reach[k]
    return None if best_reach is None else (best_rank, best_reach)


def among(index: CandidateIndex, zone_id: UUID, ask: Ask, allowed: set[int]) -> Found | None:
    """Affinity narrowed the choice to a few hosts: check them one by one."""
    best: Found | None = None
    best_score = float("inf")
    for rank in sorted(allowed):
        where = index.where.get(rank)
        if where is None:
            continue
        g, k = where
        if g.zone_id != zone_id or not ask.tags <= g.tags:
            continue
        if g.cpu_free[k] < ask.cpus or g.ram_free[k] < ask.ram:
            continue
        pools = ask.storage(g.pools[k])
        if isinstance(pools, str):
            continue
        if not ask.dispersing:
            return rank, pools
        a = (g.cpu_used[k] + ask.cpus) / g.cpu_total[k]
        b = (g.ram_used[k] + ask.ram) / g.ram_total[k]
        if max(a, b) < best_score:
            best, best_score = (rank, pools), max(a, b)
    return best
