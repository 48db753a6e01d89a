"""One request, reduced to what the scans compare: ints, frozensets and rank sets."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from cloud_engine.engine.planning.candidates import AffinityRule, PlacementRequest
from cloud_engine.engine.planning.storage import Need, PoolSet, assign


class Ask:
    """The request's needs, with pool choices remembered per pool set for one plan."""

    __slots__ = ("_storage", "cpus", "dispersing", "needs", "ram", "tags")

    def __init__(self, request: PlacementRequest, dispersing: bool) -> None:
        self.cpus = request.cpus
        self.ram = request.ram_mb
        # Stripped like the aggregates' normalise_tags, so " gpu" still matches.
        self.tags = frozenset(tag.strip() for tag in request.host_tags)
        self.needs: list[Need] = [
            (v.size_bytes, frozenset(tag.strip() for tag in v.storage_tags))
            for v in request.volumes
        ]
        self.dispersing = dispersing
        self._storage: dict[PoolSet, tuple[UUID, ...] | str] = {}

    def storage(self, pools: PoolSet) -> tuple[UUID, ...] | str:
        """Pool ids per volume, or why the volumes do not fit on these pools."""
        found = self._storage.get(pools)
        if found is None:
            found = self._storage[pools] = assign(self.needs, pools, self.dispersing)
        return found


class Rules:
    """Avoided hosts and affinity groups as sets of host ranks.

    Groups without placed members constrain nothing. Best-effort groups are
    honoured in request order: the planner drops them from the last one
    backwards until a host fits.
    """

    __slots__ = ("affinity", "anti", "avoided", "soft")

    def __init__(
        self,
        request: PlacementRequest,
        groups: Iterable[AffinityRule],
        rank_of: dict[UUID, int],
    ) -> None:
        by_name = {group.name: group for group in groups}
        self.avoided = {rank_of[h] for h in request.avoid_host_ids if h in rank_of}
        self.anti: list[tuple[str, set[int]]] = []
        self.affinity: list[tuple[str, set[int]]] = []
        self.soft: list[tuple[AffinityRule, set[int]]] = []
        for name in dict.fromkeys(request.affinity_groups):
            group = by_name.get(name)
            if group is None or not group.host_ids:
                continue
            # Members on hosts outside the snapshot leave an empty set: strict
            # affinity then refuses rather than ignoring the group.
            ranks = {rank_of[h] for h in group.host_ids if h in rank_of}
            if not group.strict:
                self.soft.append((group, ranks))
            elif group.kind == "anti-affinity":
                self.anti.append((name, ranks))
            else:
                self.affinity.append((name, ranks))

    def excluded(self, keep: int) -> set[int]:
        """Hosts ruled out when the first `keep` best-effort groups are honoured."""
        out = set(self.avoided)
        for _, ranks in self.anti:
            out |= ranks
        for group, ranks in self.soft[:keep]:
            if group.kind == "anti-affinity":
                out |= ranks
        return out

    def allowed(self, keep: int) -> set[int] | None:
        """The only hosts allowed, or None when no affinity group restricts them."""
        sets = [ranks for _, ranks in self.affinity]
        sets += [ranks for group, ranks in self.soft[:keep] if group.kind == "affinity"]
        if not sets:
            return None
        return set.intersection(*sets)

    def relaxed(self, keep: int) -> tuple[str, ...]:
        return tuple(group.name for group, _ in self.soft[keep:])
