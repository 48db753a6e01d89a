"""Choosing a pool for each of a VM's volumes among the pools one cluster reaches.

Which pools a host reaches depends on its cluster (the cluster's own pools
plus its zone's zone-scoped ones) and, for a host with local storage, on the
host (its host-scoped pools too), so the planner asks this once per cluster
(or such host) and plan, not once per host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from uuid import UUID

from cloud_engine.engine.planning.candidates import PoolCandidate

# (size in bytes, storage tags) of one volume.
Need = tuple[int, frozenset[str]]

# Packing several volumes is a small bin-packing search; a VM has a handful of
# disks, and the cap only bounds a pathological request (it then refuses).
_SEARCH_BUDGET: Final = 4096


class PoolSet:
    """The enabled pools one cluster reaches, in id order (the first-fit order)."""

    __slots__ = ("_tagged", "free", "ids", "tags")

    def __init__(self, pools: Sequence[PoolCandidate]) -> None:
        ordered = sorted(pools, key=lambda p: p.id.int)
        self.ids: list[UUID] = [p.id for p in ordered]
        # Same arithmetic as StoragePool.reserve: a size fits iff
        # used + size <= total.
        self.free: list[int] = [p.total_bytes - p.used_bytes for p in ordered]
        self.tags: list[frozenset[str]] = [p.tags for p in ordered]
        self._tagged: dict[frozenset[str], tuple[list[int], int, int]] = {}

    def tagged(self, tags: frozenset[str]) -> tuple[list[int], int, int]:
        """The pools carrying all these tags (positions, in id order), the most
        free bytes among them, and the first pool with that much (-1 if none).

        Remembered per tag set: requests repeat a few tag sets, and a refusal
        may ask every cluster, so most answers cost one dict lookup. The
        snapshot never changes, so the memo cannot go stale.
        """
        found = self._tagged.get(tags)
        if found is None:
            free = self.free
            positions = [p for p, pool_tags in enumerate(self.tags) if tags <= pool_tags]
            most, emptiest = -1, -1
            for p in positions:
                if free[p] > most:
                    most, emptiest = free[p], p
            found = self._tagged[tags] = (positions, most, emptiest)
        return found


def format_bytes(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{round(n / scale, 2):g} {unit}"
    return f"{n} B"


def volume_label(index: int, size: int, tags: frozenset[str]) -> str:
    name = "root volume" if index == 0 else f"data volume {index}"
    tagged = f", tags {', '.join(sorted(tags))}" if tags else ""
    return f"{name} ({format_bytes(size)}{tagged})"


def assign(needs: Sequence[Need], pools: PoolSet, dispersing: bool) -> tuple[UUID, ...] | str:
    """Pool ids per volume (in needs order), or why they do not fit.

    first-fit takes the lowest pool id with room; dispersing the pool with the
    most bytes left after the volumes already assigned in this plan.
    """
    free = pools.free
    options: list[list[int]] = []
    for v, (size, tags) in enumerate(needs):
        positions, most, emptiest = pools.tagged(tags)
        if size > most:
            return _why(v, size, tags, pools, positions)
        if len(needs) == 1:
            if dispersing:
                return (pools.ids[emptiest],)
            return (pools.ids[next(p for p in positions if free[p] >= size)],)
        options.append([p for p in positions if free[p] >= size])
    # Request order, so the first branch is the plain per-volume strategy;
    # backtracking only runs when that greedy choice strands a later volume.
    order = list(range(len(needs)))
    chosen_by_volume = [0] * len(needs)
    search = _Packing(needs, options, list(free), chosen_by_volume, dispersing)
    if search.place(order, 0):
        return tuple(pools.ids[p] for p in chosen_by_volume)
    total = sum(size for size, _ in needs)
    return f"the {len(needs)} volumes ({format_bytes(total)}) do not fit together"


def _why(index: int, size: int, tags: frozenset[str], pools: PoolSet, tagged: list[int]) -> str:
    label = volume_label(index, size, tags)
    if not pools.ids:
        return "no enabled pool reachable"
    if not tagged:
        return f"no enabled pool has the tags of the {label}"
    return f"no pool has room for the {label}"


class _Packing:
    """Depth-first search over pool choices; the first branch is the greedy one."""

    def __init__(
        self,
        needs: Sequence[Need],
        options: list[list[int]],
        remaining: list[int],
        chosen: list[int],
        dispersing: bool,
    ) -> None:
        self.needs = needs
        self.options = options
        self.remaining = remaining
        self.chosen = chosen
        self.dispersing = dispersing
        self.budget = _SEARCH_BUDGET

    def place(self, order: list[int], depth: int) -> bool:
        if depth == len(order):
            return True
        volume = order[depth]
        size = self.needs[volume][0]
        remaining = self.remaining
        fits = [p for p in self.options[volume] if remaining[p] >= size]
        if self.dispersing:
            fits.sort(key=lambda p: (-remaining[p], p))
        for p in fits:
            self.budget -= 1
            if self.budget < 0:
                return False
            remaining[p] -= size
            self.chosen[volume] = p
            if self.place(order, depth + 1):
                return True
            remaining[p] += size
        return False
