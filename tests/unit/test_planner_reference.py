"""The planner against a brute-force reference on small random snapshots.

The reference checks every host against every constraint and every way of
putting the volumes on pools, with none of the planner's grouping, pruning or
early exits, so any shortcut that changes an answer shows up here.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_engine.engine.planning import (
    AffinityRule,
    HostCandidate,
    Placement,
    PlacementRequest,
    Planner,
    PoolCandidate,
    Refusal,
    Strategy,
    VolumeRequest,
)
from tests.unit.test_planner import OTHER_ZONE, VM, ZONE, cluster

TAGS = st.frozensets(st.sampled_from(["a", "b"]), max_size=2)
# Requests ask for tags less often than hosts and pools carry them, so that
# most examples have some host that fits and the choice between them counts.
FEW_TAGS = st.just(frozenset[str]()) | st.just(frozenset[str]()) | TAGS


def often(usual: Any, *rare: Any) -> st.SearchStrategy[Any]:
    """usual nine times in ten: sampled_from alone would make every draw of
    a long list likely to hit a rare value."""
    return st.integers(0, 9).flatmap(lambda n: st.just(usual) if n < 9 else st.sampled_from(rare))


@st.composite
def snapshots(draw: Any, crowded: bool = False) -> tuple[list[HostCandidate], list[PoolCandidate]]:
    """crowded: many untagged hosts, most of them full, so that the planner's
    scarce-host path (bisection instead of a walk) is taken."""
    if crowded:
        host_ids = draw(st.lists(st.integers(1, 300), unique=True, min_size=20, max_size=80))
    else:
        host_ids = draw(st.lists(st.integers(1, 60), unique=True, min_size=1, max_size=16))
    scarce = draw(st.sampled_from(["cpu", "ram"]))
    hosts = []
    for n in host_ids:
        cpu_total = draw(st.integers(1, 16))
        ram_total = draw(st.integers(1, 16))
        # Mostly lightly used, so that capacity is one reason among several.
        cpu_used = draw(st.integers(0, cpu_total // 2) | st.integers(0, cpu_total))
        ram_used = draw(st.integers(0, ram_total // 2) | st.integers(0, ram_total))
        if crowded and draw(st.integers(0, 19)) < 19:
            cpu_used, ram_used = (cpu_total, 0) if scarce == "cpu" else (0, ram_total)
        hosts.append(
            HostCandidate(
                id=UUID(int=n),
                zone_id=draw(often(ZONE, OTHER_ZONE)),
                pod_id=UUID(int=0xB0),
                cluster_id=cluster(draw(st.integers(1, 3))),
                state=draw(often("Enabled", "Disabled", "Down", "Maintenance")),
                cpu_total=cpu_total,
                cpu_used=cpu_used,
                ram_total_mb=ram_total,
                ram_used_mb=ram_used,
                tags=frozenset() if crowded else draw(TAGS),
            )
        )
    pools = []
    for n in draw(st.lists(st.integers(1, 30), unique=True, min_size=2, max_size=6)):
        total = draw(st.integers(1, 30))
        pools.append(
            PoolCandidate(
                id=UUID(int=0x5000 + n),
                zone_id=draw(often(ZONE, OTHER_ZONE)),
                cluster_id=draw(st.sampled_from([None, None, cluster(1), cluster(2), cluster(3)])),
                state=draw(often("Enabled", "Maintenance", "Disabled")),
                total_bytes=total,
                used_bytes=draw(st.integers(0, total // 2)),
                tags=draw(TAGS),
            )
        )
    return hosts, pools


@st.composite
def requests(draw: Any, host_ids: list[UUID]) -> tuple[PlacementRequest, list[AffinityRule]]:
    some_hosts = st.lists(st.sampled_from(host_ids or [UUID(int=99)]), max_size=3)
    groups = [
        AffinityRule(
            name=f"g{i}",
            kind=draw(st.sampled_from(["affinity", "anti-affinity"])),
            strict=draw(st.booleans()),
            host_ids=tuple(draw(some_hosts)),
        )
        for i in range(draw(st.integers(0, 3)))
    ]
    data = st.builds(VolumeRequest, size_bytes=st.integers(1, 6), storage_tags=st.just(()))
    request = PlacementRequest(
        vm_id=VM,
        zone_id=ZONE,
        cpus=draw(st.integers(1, 4) | st.integers(1, 12)),
        ram_mb=draw(st.integers(1, 4) | st.integers(1, 12)),
        root_size_bytes=draw(st.integers(1, 8)),
        root_storage_tags=tuple(draw(FEW_TAGS)),
        data_volumes=tuple(draw(st.lists(data, max_size=2))),
        host_tags=tuple(draw(FEW_TAGS)),
        affinity_groups=tuple(group.name for group in groups),
        avoid_host_ids=tuple(draw(st.just([]) | some_hosts)),
        required_host_id=draw(
            st.none() | st.none() | st.none() | st.sampled_from(host_ids or [VM])
        ),
    )
    return request, groups


def storage_fits(
    host: HostCandidate, pools: list[PoolCandidate], request: PlacementRequest
) -> bool:
    reachable = [
        p
        for p in pools
        if p.state == "Enabled"
        and p.zone_id == host.zone_id
        and p.cluster_id in (None, host.cluster_id)
    ]
    for choice in itertools.product(reachable, repeat=len(request.volumes)):
        if valid_pools(choice, request):
            return True
    return False


def valid_pools(choice: tuple[PoolCandidate, ...], request: PlacementRequest) -> bool:
    used: Counter[UUID] = Counter()
    for p, volume in zip(choice, request.volumes, strict=True):
        if not set(volume.storage_tags) <= p.tags:
            return False
        used[p.id] += volume.size_bytes
        if p.used_bytes + used[p.id] > p.total_bytes:
            return False
    return True


def first_broken(
    h: HostCandidate, pools: list[PoolCandidate], r: PlacementRequest, groups: list[AffinityRule]
) -> str | None:
    strict = [g for g in groups if g.strict and g.host_ids]
    checks = [
        ("zone", h.zone_id == r.zone_id),
        ("state", h.state == "Enabled"),
        ("host-tags", set(r.host_tags) <= h.tags),
        ("cpu", h.cpu_used + r.cpus <= h.cpu_total),
        ("ram", h.ram_used_mb + r.ram_mb <= h.ram_total_mb),
        ("avoided", h.id not in r.avoid_host_ids),
        (
            "anti-affinity",
            not any(g.kind == "anti-affinity" and h.id in g.host_ids for g in strict),
        ),
        ("affinity", all(g.kind == "anti-affinity" or h.id in g.host_ids for g in strict)),
        ("storage", storage_fits(h, pools, r)),
    ]
    return next((name for name, ok in checks if not ok), None)


def honours(h: HostCandidate, group: AffinityRule) -> bool:
    return (h.id in group.host_ids) == (group.kind == "affinity")


def reference(
    hosts: list[HostCandidate],
    pools: list[PoolCandidate],
    r: PlacementRequest,
    groups: list[AffinityRule],
    strategy: Strategy,
) -> tuple[UUID, tuple[str, ...]] | None:
    fitting = [h for h in hosts if first_broken(h, pools, r, groups) is None]
    soft = [g for g in groups if not g.strict and g.host_ids]
    if r.required_host_id is not None:
        fitting = [h for h in fitting if h.id == r.required_host_id]
        if not fitting:
            return None
        return fitting[0].id, tuple(g.name for g in soft if not honours(fitting[0], g))
    for keep in range(len(soft), -1, -1):
        allowed = [h for h in fitting if all(honours(h, g) for g in soft[:keep])]
        if allowed:
            if strategy == "first-fit":
                return min(allowed, key=lambda h: h.id.int).id, tuple(g.name for g in soft[keep:])
            chosen = min(allowed, key=lambda h: (load_after(h, r), h.id.int))
            return chosen.id, tuple(g.name for g in soft[keep:])
    return None


def load_after(h: HostCandidate, r: PlacementRequest) -> float:
    return max((h.cpu_used + r.cpus) / h.cpu_total, (h.ram_used_mb + r.ram_mb) / h.ram_total_mb)


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    snapshot=snapshots() | snapshots(crowded=True),
    strategy=st.sampled_from(["first-fit", "dispersing"]),
)
def test_the_planner_agrees_with_the_reference(
    data: st.DataObject,
    snapshot: tuple[list[HostCandidate], list[PoolCandidate]],
    strategy: Strategy,
) -> None:
    hosts, pools = snapshot
    request, groups = data.draw(requests([h.id for h in hosts]))
    result = Planner(hosts, pools).plan(request, groups, strategy)
    expected = reference(hosts, pools, request, groups, strategy)
    if expected is None:
        assert isinstance(result, Refusal), result
        if request.required_host_id is None:
            assert sum(e.count for e in result.eliminations) == result.hosts_considered
            broken = Counter(first_broken(h, pools, request, groups) for h in hosts)
            assert _summed(result) == broken
        return
    assert isinstance(result, Placement), result
    assert (result.host_id, result.relaxed) == expected
    by_id = {p.id: p for p in pools}
    chosen_host = next(h for h in hosts if h.id == result.host_id)
    choice = tuple(by_id[p] for p in result.pool_ids)
    assert valid_pools(choice, request)
    assert all(
        p.state == "Enabled"
        and p.zone_id == chosen_host.zone_id
        and p.cluster_id in (None, chosen_host.cluster_id)
        for p in choice
    )


def _summed(result: Refusal) -> Counter[str | None]:
    out: Counter[str | None] = Counter()
    for e in result.eliminations:
        out[e.constraint] += e.count
    return out
