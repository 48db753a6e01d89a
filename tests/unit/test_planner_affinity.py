"""DeploymentPlanner affinity groups and named hosts (migration targets)."""

from __future__ import annotations

from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.planning import AffinityRule, Planner
from tests.unit.test_planner import VM, ask, counts, host, placed, pool, refused, run


def group(name: str, kind: str, strict: bool, *hosts: int) -> AffinityRule:
    return msgspec.convert(
        {"name": name, "kind": kind, "strict": strict, "host_ids": [UUID(int=h) for h in hosts]},
        AffinityRule,
    )


def test_strict_anti_affinity_excludes_the_groups_hosts() -> None:
    hosts = [host(1), host(2), host(3)]
    web = group("web", "anti-affinity", True, 1, 2)
    placed(run(hosts, ask(affinity_groups=("web",)), groups=[web]), 3)
    result = refused(run(hosts[:2], ask(affinity_groups=("web",)), groups=[web]))
    assert counts(result) == {"anti-affinity": 2}
    assert result.message.endswith("2 hosts used by anti-affinity group web")


def test_best_effort_anti_affinity_prefers_other_hosts_then_falls_back() -> None:
    web = group("web", "anti-affinity", False, 1)
    request = ask(affinity_groups=("web",))
    result = placed(run([host(1), host(2)], request, groups=[web]), 2)
    assert result.relaxed == ()
    result = placed(run([host(1), host(2, cpus=1)], request, groups=[web]), 1)
    assert result.relaxed == ("web",)


def test_strict_affinity_requires_a_host_the_group_uses() -> None:
    hosts = [host(1), host(2), host(3)]
    db = group("db", "affinity", True, 3)
    for strategy in ("first-fit", "dispersing"):
        placed(run(hosts, ask(affinity_groups=("db",)), groups=[db], strategy=strategy), 3)
    # Without placed members the group constrains nothing.
    empty = group("db", "affinity", True)
    placed(run(hosts, ask(affinity_groups=("db",)), groups=[empty]), 1)
    full = [host(1), host(2), host(3, cpus=1)]
    result = refused(run(full, ask(affinity_groups=("db",)), groups=[db]))
    assert counts(result) == {"cpu": 1, "affinity": 2}
    assert result.message.endswith("1 host lacks cpu (need 2), 2 outside affinity group db")


def test_best_effort_affinity_prefers_the_groups_hosts_then_falls_back() -> None:
    db = group("db", "affinity", False, 2)
    request = ask(affinity_groups=("db",))
    placed(run([host(1), host(2)], request, groups=[db]), 2)
    result = placed(run([host(1), host(2, ram_mb=1024)], request, groups=[db]), 1)
    assert result.relaxed == ("db",)


def test_best_effort_groups_are_dropped_last_first() -> None:
    hosts = [host(1), host(2), host(3)]
    first = group("first", "anti-affinity", False, 1, 2)
    second = group("second", "anti-affinity", False, 3)
    request = ask(affinity_groups=("first", "second"))
    result = placed(run(hosts, request, groups=[first, second]), 3)
    assert result.relaxed == ("second",)


# A named host (migration target) -------------------------------------------------


def test_a_named_host_is_used_when_it_fits() -> None:
    hosts = [host(1), host(2)]
    result = placed(run(hosts, ask(required_host_id=UUID(int=2))), 2, [1])
    assert result.relaxed == ()


def test_a_named_host_is_refused_with_every_reason() -> None:
    hosts = [host(1), host(2, state="Maintenance", cpus=4, cpus_used=3)]
    web = group("web", "anti-affinity", True, 2)
    request = ask(
        required_host_id=UUID(int=2),
        avoid_host_ids=(UUID(int=2),),
        affinity_groups=("web",),
    )
    result = refused(run(hosts, request, groups=[web]))
    assert [e.constraint for e in result.eliminations] == [
        "state",
        "cpu",
        "avoided",
        "anti-affinity",
    ]
    assert result.hosts_considered == 1
    assert result.message == (
        f"host {UUID(int=2)} cannot take vm {VM}: in Maintenance, lacks cpu (need 2, 1 free), "
        "avoided, used by anti-affinity group web"
    )


def test_an_unknown_named_host_is_refused() -> None:
    stranger = uuid4()
    result = refused(run([host(1)], ask(required_host_id=stranger)))
    assert result.eliminations[0].constraint == "unknown"
    assert str(stranger) in result.message


def test_one_planner_serves_many_plans_without_carrying_state() -> None:
    planner = Planner([host(1), host(2)], [pool(1)])
    first = planner.plan(ask(avoid_host_ids=(UUID(int=1),)))
    second = planner.plan(ask())
    placed(first, 2)
    placed(second, 1)
