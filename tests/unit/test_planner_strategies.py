"""DeploymentPlanner strategies: first-fit and dispersing, plain and with few fits."""

from __future__ import annotations

import msgspec
import pytest

from cloud_engine.engine.planning import HostCandidate
from tests.unit.test_planner import GIB, ask, cluster, host, placed, pool, run


def test_first_fit_takes_the_lowest_fitting_id_whatever_the_input_order() -> None:
    hosts = [host(9), host(3, cpus_used=15), host(5, in_cluster=2), host(7)]
    pools = [pool(2, in_cluster=2), pool(1)]
    placed(run(hosts, pools=pools), 5, [2])


def test_dispersing_takes_the_least_loaded_host_after_placement() -> None:
    hosts = [
        host(1, cpus_used=8),  # 10/16
        host(2, cpus=64, cpus_used=40),  # 42/64, but RAM is idle
        host(3, cpus=8, cpus_used=1, ram_used=40000),  # RAM 42048/65536
        host(4, cpus=32, cpus_used=4),  # 6/32: the least loaded
    ]
    placed(run(hosts, strategy="dispersing"), 4)


def test_dispersing_breaks_ties_by_id_and_picks_the_emptiest_pool() -> None:
    hosts = [host(8, cpus_used=4), host(6, cpus_used=4), host(7, cpus_used=5)]
    pools = [pool(1, used=900 * GIB), pool(2, used=100 * GIB), pool(3, used=500 * GIB)]
    placed(run(hosts, pools=pools, strategy="dispersing"), 6, [2])
    placed(run(hosts, pools=pools, strategy="first-fit"), 6, [1])


def crowd(free: dict[int, int], *, resource: str = "cpu") -> list[HostCandidate]:
    """64 hosts, all full on one resource but those in `free` (host -> free)."""
    out = []
    for n in range(1, 65):
        left = free.get(n, 0)
        if resource == "cpu":
            out.append(host(n, cpus=16, cpus_used=16 - left))
        else:
            out.append(host(n, ram_mb=16384, ram_used=16384 - left * 1024))
    return out


@pytest.mark.parametrize("resource", ["cpu", "ram"])
def test_few_hosts_with_room_are_found_by_both_strategies(resource: str) -> None:
    hosts = crowd({50: 12, 20: 8, 33: 4}, resource=resource)
    request = ask(cpus=4, ram_mb=4096)
    placed(run(hosts, request), 20)
    placed(run(hosts, request, strategy="dispersing"), 50)


def test_a_host_whose_cluster_has_no_room_is_passed_over_by_both_strategies() -> None:
    hosts = crowd({50: 12, 20: 8, 33: 4})
    moved = {20: 2, 50: 2}
    hosts = [msgspec.structs.replace(h, cluster_id=cluster(moved.get(h.id.int, 1))) for h in hosts]
    request = ask(cpus=4)
    placed(run(hosts, request), 33)
    placed(run(hosts, request, strategy="dispersing"), 33)
    placed(run(hosts, request, pools=[pool(1), pool(2, in_cluster=2)], strategy="dispersing"), 50)
