"""DeploymentPlanner storage: reachable, enabled, tagged pools and volume packing."""

from __future__ import annotations

from cloud_engine.engine.planning import VolumeRequest
from tests.unit.test_planner import (
    GIB,
    OTHER_ZONE,
    ask,
    counts,
    host,
    placed,
    pool,
    refused,
    run,
)


def test_pools_must_be_enabled_reachable_and_tagged() -> None:
    hosts = [host(1), host(2, in_cluster=2)]
    pools = [
        pool(1, state="Maintenance", tags=["ssd"]),
        pool(2, in_cluster=3, tags=["ssd"]),  # another cluster: unreachable
        pool(3, in_cluster=2, tags=["ssd"]),
        pool(4, tags=["hdd"]),
    ]
    placed(run(hosts, ask(root_storage_tags=("ssd",)), pools=pools), 2, [3])
    result = refused(run(hosts[:1], ask(root_storage_tags=("ssd",)), pools=pools))
    assert counts(result) == {"storage": 1}
    assert "lacks storage (no enabled pool has the tags of the root volume" in result.message
    result = refused(run(hosts[:1], ask(root_size_bytes=2000 * GIB), pools=pools))
    assert "no pool has room for the root volume (1.95 TiB)" in result.message


def test_zone_scoped_pools_serve_every_cluster_of_their_zone() -> None:
    hosts = [host(1, in_cluster=7), host(2, in_cluster=8, zone=OTHER_ZONE)]
    shared = pool(9, in_cluster=None, tags=["nfs"])
    foreign = pool(8, in_cluster=None, zone=OTHER_ZONE)
    placed(run(hosts, ask(root_storage_tags=("nfs",)), pools=[shared, foreign]), 1, [9])
    request = ask(zone_id=OTHER_ZONE, root_storage_tags=("nfs",))
    result = refused(run(hosts, request, pools=[shared, foreign]))
    assert counts(result) == {"zone": 1, "storage": 1}


def test_several_volumes_on_one_pool_add_up() -> None:
    hosts = [host(1)]
    pools = [pool(1, total=25 * GIB)]
    two = ask(data_volumes=(VolumeRequest(size_bytes=10 * GIB),))
    placed(run(hosts, two, pools=pools), 1, [1, 1])
    too_much = ask(data_volumes=(VolumeRequest(size_bytes=16 * GIB),))
    result = refused(run(hosts, too_much, pools=pools))
    assert "the 2 volumes (26 GiB) do not fit together" in result.message
    spill = [*pools, pool(2, total=16 * GIB)]
    placed(run(hosts, too_much, pools=spill), 1, [1, 2])


def test_volumes_are_packed_even_when_the_greedy_choice_would_block() -> None:
    pools = [pool(1, total=100 * GIB, tags=["ssd"]), pool(2, total=50 * GIB)]
    request = ask(
        root_size_bytes=50 * GIB,
        data_volumes=(VolumeRequest(size_bytes=60 * GIB, storage_tags=("ssd",)),),
    )
    for strategy in ("first-fit", "dispersing"):
        placed(run([host(1)], request, pools=pools, strategy=strategy), 1, [2, 1])
