"""Why no host fits: counts per constraint, a few host ids, one line for humans.

Only run once the search found nothing, so its cost is paid by refusals alone,
and kept well below a scan of every host: whole groups are counted at once
(zone, state, tags, cpu by bisection over the group's free cpu), RAM in one
comprehension over the hosts with enough cpu, the avoided and affinity rules
by visiting only their members, and storage last, as in the search.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from uuid import UUID

from cloud_engine.engine.planning.candidates import (
    Constraint,
    Elimination,
    PlacementRequest,
    Refusal,
)
from cloud_engine.engine.planning.index import CandidateIndex, Group
from cloud_engine.engine.planning.rules import Ask, Rules

SAMPLE = 5
# Enough hosts to name a couple of distinct storage reasons.
_STORAGE_LOOKS = 64


def refuse(index: CandidateIndex, request: PlacementRequest, ask: Ask, rules: Rules) -> Refusal:
    """Attribute every host to the first constraint (in Constraint order) it breaks."""
    found = _Tally(index)
    zone = index.zones.get(request.zone_id)
    outside = [z.ranks for z in index.zones.values() if z is not zone]
    count = sum(map(len, outside))
    first = (rank for ranks in outside for rank in ranks[:SAMPLE])
    found.add("zone", count, first, f"not in zone {request.zone_id}")
    if zone is not None:
        for state in sorted(zone.by_state):
            ranks = zone.by_state[state]
            found.add("state", len(ranks), ranks[:SAMPLE], state)
        alive = _tags_and_capacity(found, zone.groups, ask)
        _rules(found, alive, rules, index)
        _storage(found, alive, ask)
    eliminations = tuple(found.eliminations)
    return Refusal(
        vm_id=request.vm_id,
        hosts_considered=len(index.ids),
        eliminations=eliminations,
        message=f"no host fits vm {request.vm_id}: {summary(eliminations)}",
    )


class _Alive:
    """The hosts of one group still in the running: those with the cpu and RAM
    asked for, less those a rule removed; once an affinity group applied, only
    the listed positions."""

    __slots__ = ("c", "candidates", "count", "g", "only", "r", "removed")

    def __init__(self, g: Group, c: int, r: int, count: int, candidates: list[int] | None) -> None:
        self.g, self.c, self.r, self.count = g, c, r, count
        # When few hosts have enough cpu (or RAM), walks visit only those.
        self.candidates = candidates
        self.removed: set[int] = set()
        self.only: set[int] | None = None

    def holds(self, k: int) -> bool:
        if self.only is not None:
            return k in self.only
        g = self.g
        return g.cpu_free[k] >= self.c and g.ram_free[k] >= self.r and k not in self.removed

    def walk(self) -> Iterator[int]:
        """Positions still alive, in rank order."""
        if self.only is not None:
            return iter(sorted(self.only))
        cpu, ram, c, r, removed = self.g.cpu_free, self.g.ram_free, self.c, self.r, self.removed
        visit = range(len(cpu)) if self.candidates is None else self.candidates
        return (k for k in visit if cpu[k] >= c and ram[k] >= r and k not in removed)


def _tags_and_capacity(found: _Tally, groups: list[Group], ask: Ask) -> list[_Alive]:
    need, c, r = ask.tags, ask.cpus, ask.ram
    missing: set[str] = set()
    untagged: list[list[int]] = []
    no_cpu: list[list[int]] = []  # samples only
    no_cpu_count = 0
    no_ram: list[list[int]] = []
    alive: list[_Alive] = []
    for g in groups:
        if not need <= g.tags:
            untagged.append(g.ranks)
            missing |= need - g.tags
            continue
        n = len(g.ranks)
        short = bisect_left(g.cpu_sorted, c)  # hosts with less free cpu than asked
        if short * 2 > n:
            # Most lack cpu: the first few in rank order are found at once.
            first = (rank for rank, free in zip(g.ranks, g.cpu_free, strict=True) if free < c)
            no_cpu.append(list(islice(first, SAMPLE)))
        elif short:
            no_cpu.append(g.ranks_by_cpu[:short])
        no_cpu_count += short
        if short == n:
            continue
        low = bisect_left(g.ram_sorted, r)  # hosts with less free RAM than asked
        fit = n - short
        if low:
            # Of the hosts with enough cpu, those short of RAM: read them off
            # whichever list is shorter.
            if low <= n - short:
                pairs = zip(g.ranks_by_ram[:low], g.cpu_by_ram[:low], strict=True)
                lacking = [rank for rank, cpu in pairs if cpu >= c]
            else:
                above = zip(g.ranks_by_cpu[short:], g.ram_by_cpu[short:], strict=True)
                lacking = [rank for rank, ram in above if ram < r]
            if lacking:
                no_ram.append(lacking)
                fit -= len(lacking)
        if fit:
            fewest = g.by_cpu[short:] if short >= low else g.by_ram[low:]
            candidates = sorted(fewest) if len(fewest) * 4 < n else None
            alive.append(_Alive(g, c, r, fit, candidates))
    found.add("host-tags", sum(map(len, untagged)), _firsts(untagged), tag_text(sorted(missing)))
    found.add("cpu", no_cpu_count, chain.from_iterable(no_cpu), f"need {c}")
    found.add("ram", sum(map(len, no_ram)), chain.from_iterable(no_ram), f"need {r} MiB")
    return alive


def _rules(found: _Tally, alive: list[_Alive], rules: Rules, index: CandidateIndex) -> None:
    by_group = {a.g: a for a in alive}

    def members_by_group(members: set[int]) -> dict[_Alive, set[int]]:
        out: dict[_Alive, set[int]] = {}
        for rank in members:
            where = index.where.get(rank)
            if where is not None and where[0] in by_group:
                out.setdefault(by_group[where[0]], set()).add(where[1])
        return out

    def remove(constraint: Constraint, members: set[int], detail: str) -> None:
        gone: list[int] = []
        for a, positions in members_by_group(members).items():
            hit = [k for k in positions if a.holds(k)]
            if a.only is not None:
                a.only.difference_update(hit)
            else:
                a.removed.update(hit)
            a.count -= len(hit)
            gone += [a.g.ranks[k] for k in hit]
        found.add(constraint, len(gone), gone, detail)

    if rules.avoided:
        remove("avoided", rules.avoided, "")
    for name, ranks in rules.anti:
        remove("anti-affinity", ranks, name)
    for name, ranks in rules.affinity:
        members = members_by_group(ranks)
        outside, sample = 0, list[int]()
        for a in alive:
            kept = {k for k in members.get(a, ()) if a.holds(k)}
            if a.count > len(kept):
                outside += a.count - len(kept)
                rest = (a.g.ranks[k] for k in a.walk() if k not in kept)
                sample += islice(rest, SAMPLE)
            a.only, a.count = kept, len(kept)
        found.add("affinity", outside, sample, name)


def _storage(found: _Tally, alive: list[_Alive], ask: Ask) -> None:
    # The search found nothing, so every host still alive here reaches no
    # pools that fit: counting them is enough, and a few give the reasons.
    reasons: dict[str, None] = {}
    sample: list[int] = []
    for a in alive:
        for k in islice(a.walk(), _STORAGE_LOOKS):
            verdict = ask.storage(a.g.pools[k])
            if isinstance(verdict, str):
                reasons[verdict] = None
            sample.append(a.g.ranks[k])
    count = sum(a.count for a in alive)
    found.add("storage", count, sample, "; ".join(list(reasons)[:2]))


def _firsts(lists: list[list[int]]) -> Iterable[int]:
    return chain.from_iterable(ranks[:SAMPLE] for ranks in lists)


class _Tally:
    def __init__(self, index: CandidateIndex) -> None:
        self.ids = index.ids
        self.eliminations: list[Elimination] = []

    def add(self, constraint: Constraint, count: int, ranks: Iterable[int], detail: str) -> None:
        """ranks: eliminated hosts to name the lowest few of (not necessarily all)."""
        if count:
            sample = tuple(self.ids[rank] for rank in heapq.nsmallest(SAMPLE, ranks))
            self.eliminations.append(
                Elimination(constraint=constraint, count=count, host_ids=sample, detail=detail)
            )


def check_host(
    index: CandidateIndex, rank: int, request: PlacementRequest, ask: Ask, rules: Rules
) -> tuple[list[Elimination], tuple[UUID, ...]]:
    """Every constraint one named host breaks (not just the first), and the
    pools it would use."""
    host = index.hosts[rank]
    broken: list[Elimination] = []

    def fail(constraint: Constraint, detail: str) -> None:
        broken.append(
            Elimination(constraint=constraint, count=1, host_ids=(host.id,), detail=detail)
        )

    if host.zone_id != request.zone_id:
        fail("zone", f"not in zone {request.zone_id}")
    if host.state != "Enabled":
        fail("state", host.state)
    if not ask.tags <= host.tags:
        fail("host-tags", tag_text(sorted(ask.tags - host.tags)))
    cpu_free = host.cpu_total - host.cpu_used
    if ask.cpus > cpu_free:
        fail("cpu", f"need {ask.cpus}, {cpu_free} free")
    ram_free = host.ram_total_mb - host.ram_used_mb
    if ask.ram > ram_free:
        fail("ram", f"need {ask.ram} MiB, {ram_free} MiB free")
    if rank in rules.avoided:
        fail("avoided", "")
    for name, ranks in rules.anti:
        if rank in ranks:
            fail("anti-affinity", name)
    for name, ranks in rules.affinity:
        if rank not in ranks:
            fail("affinity", name)
    pools = ask.storage(index.pool_set(host.zone_id, host.cluster_id, host.id))
    if isinstance(pools, str):
        fail("storage", pools)
    return broken, (() if isinstance(pools, str) else pools)


def unknown_host(request: PlacementRequest, host_id: UUID) -> Refusal:
    gone = Elimination(
        constraint="unknown", count=1, host_ids=(host_id,), detail="not a known host"
    )
    return Refusal(
        vm_id=request.vm_id,
        hosts_considered=1,
        eliminations=(gone,),
        message=f"host {host_id} cannot take vm {request.vm_id}: it is not a known host",
    )


def host_refusal(request: PlacementRequest, host_id: UUID, broken: list[Elimination]) -> Refusal:
    return Refusal(
        vm_id=request.vm_id,
        hosts_considered=1,
        eliminations=tuple(broken),
        message=f"host {host_id} cannot take vm {request.vm_id}: "
        + ", ".join(_phrase(e, single=True) for e in broken),
    )


def tag_text(missing: list[str]) -> str:
    return ("tag " if len(missing) == 1 else "tags ") + ", ".join(missing)


def summary(eliminations: tuple[Elimination, ...]) -> str:
    if not eliminations:
        return "there are no hosts"
    parts = [_phrase(e, single=False) for e in eliminations]
    # Only the first count names its unit: "3 hosts Disabled, 10 lack cpu".
    noun = "host" if eliminations[0].count == 1 else "hosts"
    parts[0] = parts[0].replace(" ", f" {noun} ", 1)
    return ", ".join(parts)


def _phrase(e: Elimination, *, single: bool) -> str:
    s = "s" if single or e.count == 1 else ""
    text = {
        "unknown": e.detail,
        "zone": "in another zone",
        "state": "in Maintenance" if e.detail == "Maintenance" else e.detail,
        "host-tags": f"lack{s} {e.detail}",
        "storage": f"lack{s} storage ({e.detail})",
        "cpu": f"lack{s} cpu ({e.detail})",
        "ram": f"lack{s} ram ({e.detail})",
        "avoided": "avoided",
        "anti-affinity": f"used by anti-affinity group {e.detail}",
        "affinity": f"outside affinity group {e.detail}",
    }[e.constraint]
    return text if single else f"{e.count} {text}"
