"""DeploymentPlanner: constraints, refusals, and agreement with the aggregates.

The helpers here are shared by the other tests/unit/test_planner_*.py modules.

Host n has id UUID(int=n), so id order (first-fit order) is numeric order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloud_engine.engine.errors import CapacityExceeded, InvalidTransition, Validation
from cloud_engine.engine.fabric.host import Host, HostState
from cloud_engine.engine.fabric.storage_pool import StoragePool, StoragePoolState
from cloud_engine.engine.planning import (
    AffinityRule,
    HostCandidate,
    Placement,
    PlacementRequest,
    Planner,
    PlanResult,
    PoolCandidate,
    Refusal,
    Strategy,
    VolumeRequest,
    host_candidate,
    plan,
    pool_candidate,
)

GIB = 1 << 30
ZONE = UUID(int=0xA0)
OTHER_ZONE = UUID(int=0xA1)
VM = UUID(int=0xF0)


def cluster(n: int) -> UUID:
    return UUID(int=0xC00 + n)


def host(
    n: int,
    *,
    in_cluster: int = 1,
    zone: UUID = ZONE,
    state: HostState = "Enabled",
    cpus: int = 16,
    cpus_used: int = 0,
    ram_mb: int = 65536,
    ram_used: int = 0,
    tags: Iterable[str] = (),
) -> HostCandidate:
    return HostCandidate(
        id=UUID(int=n),
        zone_id=zone,
        pod_id=UUID(int=0xB0),
        cluster_id=cluster(in_cluster),
        state=state,
        cpu_total=cpus,
        cpu_used=cpus_used,
        ram_total_mb=ram_mb,
        ram_used_mb=ram_used,
        tags=frozenset(tags),
    )


def pool(
    n: int,
    *,
    in_cluster: int | None = 1,
    zone: UUID = ZONE,
    state: StoragePoolState = "Enabled",
    total: int = 1000 * GIB,
    used: int = 0,
    tags: Iterable[str] = (),
) -> PoolCandidate:
    return PoolCandidate(
        id=UUID(int=0x5000 + n),
        zone_id=zone,
        cluster_id=None if in_cluster is None else cluster(in_cluster),
        state=state,
        total_bytes=total,
        used_bytes=used,
        tags=frozenset(tags),
    )


def ask(**overrides: Any) -> PlacementRequest:
    values: dict[str, Any] = {
        "vm_id": VM,
        "zone_id": ZONE,
        "cpus": 2,
        "ram_mb": 2048,
        "root_size_bytes": 10 * GIB,
    }
    values.update(overrides)
    return PlacementRequest(**values)


def placed(result: PlanResult, host_n: int, pools: Sequence[int] | None = None) -> Placement:
    assert isinstance(result, Placement), result
    assert result.host_id == UUID(int=host_n)
    if pools is not None:
        assert result.pool_ids == tuple(UUID(int=0x5000 + p) for p in pools)
    return result


def refused(result: PlanResult) -> Refusal:
    assert isinstance(result, Refusal), result
    # The counts add up, except for a named host: it lists every constraint it breaks.
    if not result.message.startswith("host "):
        assert sum(e.count for e in result.eliminations) == result.hosts_considered
    return result


def counts(refusal: Refusal) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in refusal.eliminations:
        out[e.constraint] = out.get(e.constraint, 0) + e.count
    return out


def run(
    hosts: Iterable[HostCandidate],
    request: PlacementRequest | None = None,
    *,
    pools: Iterable[PoolCandidate] | None = None,
    groups: Iterable[AffinityRule] = (),
    strategy: Strategy = "first-fit",
) -> PlanResult:
    pool_list = [pool(1)] if pools is None else list(pools)
    return plan(request or ask(), hosts, pool_list, groups, strategy)


# Each constraint eliminates what it should and names it -----------------------


def test_no_hosts_at_all_is_a_refusal_that_says_so() -> None:
    result = refused(run([]))
    assert result.message == f"no host fits vm {VM}: there are no hosts"


def test_hosts_not_enabled_are_excluded_and_counted_per_state() -> None:
    hosts = [
        host(1, state="Disabled"),
        host(2, state="Maintenance"),
        host(3, state="Down"),
        host(4, state="Disabled"),
        host(5),
    ]
    placed(run(hosts), 5)
    result = refused(run(hosts[:4]))
    by_state = {e.detail: e.count for e in result.eliminations}
    assert by_state == {"Disabled": 2, "Down": 1, "Maintenance": 1}
    assert result.message == (f"no host fits vm {VM}: 2 hosts Disabled, 1 Down, 1 in Maintenance")


def test_hosts_of_another_zone_are_excluded() -> None:
    hosts = [host(1, zone=OTHER_ZONE), host(2, zone=OTHER_ZONE), host(3)]
    placed(run(hosts), 3)
    result = refused(run(hosts[:2]))
    assert counts(result) == {"zone": 2}
    assert result.eliminations[0].host_ids == (UUID(int=1), UUID(int=2))
    assert "2 hosts in another zone" in result.message


def test_host_tags_must_all_be_present() -> None:
    hosts = [host(1, tags=["gpu"]), host(2, tags=["ssd"]), host(3, tags=["gpu", "ssd", "x"])]
    placed(run(hosts, ask(host_tags=("gpu", "ssd"))), 3)
    placed(run(hosts, ask(host_tags=(" gpu",))), 1)
    result = refused(run(hosts[:2], ask(host_tags=("gpu", "ssd"))))
    assert counts(result) == {"host-tags": 2}
    assert "2 hosts lack tags gpu, ssd" in result.message


def test_cpu_and_ram_shortfalls_are_counted_with_what_was_needed() -> None:
    hosts = [
        host(1, cpus=4, cpus_used=1),
        host(2, cpus=8, cpus_used=6),
        host(3, ram_mb=4096, ram_used=3000),
        host(4, state="Disabled"),
    ]
    result = refused(run(hosts, ask(cpus=4, ram_mb=2048)))
    assert counts(result) == {"state": 1, "cpu": 2, "ram": 1}
    assert result.message == (
        f"no host fits vm {VM}: 1 host Disabled, 2 lack cpu (need 4), 1 lacks ram (need 2048 MiB)"
    )
    cpu = next(e for e in result.eliminations if e.constraint == "cpu")
    assert cpu.host_ids == (UUID(int=1), UUID(int=2))
    # Exactly full is still a fit: reserve refuses only used + asked > total.
    placed(run([host(1, cpus=4, cpus_used=2, ram_mb=4096, ram_used=2048)]), 1)


def test_avoided_hosts_are_skipped_and_named() -> None:
    hosts = [host(1), host(2)]
    placed(run(hosts, ask(avoid_host_ids=(UUID(int=1),))), 2)
    result = refused(run(hosts, ask(avoid_host_ids=(UUID(int=1), UUID(int=2)))))
    assert counts(result) == {"avoided": 2}
    assert result.message.endswith("2 hosts avoided")


def test_refusal_attributes_each_host_once_to_its_first_broken_constraint() -> None:
    hosts = [
        host(1, zone=OTHER_ZONE, state="Disabled"),
        host(2, state="Down", tags=["gpu"]),
        host(3, cpus=1),  # lacks the tag and cpu: counted as tags
        host(4, cpus=1, tags=["gpu"]),
        host(5, tags=["gpu"], in_cluster=9),  # no pool in cluster 9
    ]
    result = refused(run(hosts, ask(host_tags=("gpu",))))
    assert counts(result) == {"zone": 1, "state": 1, "host-tags": 1, "cpu": 1, "storage": 1}
    assert [e.constraint for e in result.eliminations] == [
        "zone",
        "state",
        "host-tags",
        "cpu",
        "storage",
    ]


def test_outcomes_round_trip_as_a_tagged_union() -> None:
    outcomes = [run([host(1)]), run([host(1, state="Down")])]
    for outcome in outcomes:
        data = msgspec.json.encode(outcome)
        assert msgspec.json.decode(data, type=PlanResult) == outcome
    assert msgspec.json.decode(msgspec.json.encode(outcomes[1]))["outcome"] == "refusal"


def test_malformed_requests_are_refused_like_the_aggregates_would() -> None:
    with pytest.raises(Validation):
        run([host(1)], ask(cpus=0))
    with pytest.raises(Validation):
        run([host(1)], ask(data_volumes=(VolumeRequest(size_bytes=0),)))
    with pytest.raises(Validation):
        run([host(1)], strategy="random")  # type: ignore[arg-type]


# Agreement with the aggregates ---------------------------------------------------

# Factors whose Decimal product sits just below a whole number: the float in
# Host.cpus_total rounds 3 x 1.3333333333333333 up to 4.0, reserve does not.
AWKWARD_FACTORS = [1.0, 1.15, 1.5, 1.3333333333333333, 1.9999999999999998, 2.2, 3.3]
FACTORS = st.sampled_from(AWKWARD_FACTORS) | st.floats(1.0, 8.0)


def settle_state(entity: Host | StoragePool, state: str) -> None:
    if state == "Disabled":
        entity.disable()
    elif state == "Maintenance":
        entity.enter_maintenance()
    elif state == "Down" and isinstance(entity, Host):
        entity.declare_down()


def accepted(reserve: Callable[[], None]) -> bool:
    try:
        reserve()
    except (CapacityExceeded, InvalidTransition):
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    cores=st.integers(1, 64),
    cpu_factor=FACTORS,
    ram_mb=st.integers(1, 4096),
    ram_factor=FACTORS,
    earlier=st.lists(st.tuples(st.integers(1, 32), st.integers(1, 2048)), max_size=4),
    state=st.sampled_from(["Enabled", "Disabled", "Maintenance", "Down"]),
    cpus=st.integers(1, 200),
    ram=st.integers(1, 9000),
)
@example(
    cores=3, cpu_factor=1.3333333333333333, ram_mb=64, ram_factor=1.0, earlier=[],
    state="Enabled", cpus=4, ram=1,
)  # fmt: skip
def test_a_host_fits_exactly_when_host_reserve_accepts(
    cores: int,
    cpu_factor: float,
    ram_mb: int,
    ram_factor: float,
    earlier: list[tuple[int, int]],
    state: str,
    cpus: int,
    ram: int,
) -> None:
    aggregate = Host.create(
        zone_id=ZONE,
        pod_id=UUID(int=0xB0),
        cluster_id=cluster(1),
        name="kvm",
        cpu_cores=cores,
        ram_mb=ram_mb,
        cpu_overcommit=cpu_factor,
        ram_overcommit=ram_factor,
        libvirt_uri="test:///default",
    )
    for earlier_cpus, earlier_ram in earlier:
        accepted(partial(aggregate.reserve, uuid4(), earlier_cpus, earlier_ram))
    settle_state(aggregate, state)
    planner = Planner([host_candidate(aggregate)], [pool(1)])
    result = planner.plan(ask(cpus=cpus, ram_mb=ram))
    fits = accepted(lambda: aggregate.reserve(VM, cpus, ram))
    assert isinstance(result, Placement) == fits, result


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 10**12),
    factor=FACTORS,
    earlier=st.lists(st.integers(1, 10**11), max_size=4),
    state=st.sampled_from(["Enabled", "Disabled", "Maintenance"]),
    sizes=st.lists(st.integers(1, 4 * 10**11), min_size=1, max_size=4),
)
def test_volumes_fit_a_pool_exactly_when_storage_pool_reserve_accepts_them_all(
    capacity: int, factor: float, earlier: list[int], state: str, sizes: list[int]
) -> None:
    aggregate = StoragePool.create(
        zone_id=ZONE,
        name="primary",
        scope="zone",
        capacity_bytes=capacity,
        url="file:///var/lib/pool",
        overcommit=factor,
    )
    for size in earlier:
        accepted(partial(aggregate.reserve, uuid4(), size))
    settle_state(aggregate, state)
    planner = Planner([host(1)], [pool_candidate(aggregate)])
    data = tuple(VolumeRequest(size_bytes=size) for size in sizes[1:])
    result = planner.plan(ask(root_size_bytes=sizes[0], data_volumes=data))
    fits = all(accepted(partial(aggregate.reserve, uuid4(), size)) for size in sizes)
    assert isinstance(result, Placement) == fits, result
    if isinstance(result, Placement):
        assert result.pool_ids == (aggregate.id,) * len(sizes)


def test_candidates_carry_the_aggregates_overcommitted_capacity() -> None:
    aggregate = Host.create(
        zone_id=ZONE,
        pod_id=UUID(int=0xB0),
        cluster_id=cluster(1),
        name="kvm",
        cpu_cores=3,
        ram_mb=1000,
        cpu_overcommit=1.3333333333333333,
        ram_overcommit=1.15,
        libvirt_uri="test:///default",
        tags=["gpu"],
    )
    aggregate.reserve(uuid4(), 1, 100)
    candidate = host_candidate(aggregate)
    assert aggregate.cpus_total == 4.0  # the float rounds up ...
    assert candidate.cpu_total == 3  # ... the Decimal reserve compares with does not
    assert (candidate.cpu_used, candidate.ram_total_mb, candidate.ram_used_mb) == (1, 1150, 100)
    assert candidate.tags == frozenset({"gpu"})
