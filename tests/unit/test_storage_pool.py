import math
from uuid import uuid4

import pytest

from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.storage_pool import StoragePool
from tests.unit.support import (
    assert_refused,
    assert_transition,
    event_names,
    replayed,
    run_steps,
    transition_cases,
)

GIB = 1024**3


def make_pool(**overrides):
    values = {
        "zone_id": uuid4(),
        "name": "primary-1",
        "scope": "zone",
        "capacity_bytes": 100 * GIB,
        "url": "file:///var/lib/cloud-engine/pool1",
    }
    values.update(overrides)
    return StoragePool.create(**values)


# Creation ------------------------------------------------------------------------


def test_create_zone_scoped_pool():
    pool_id = uuid4()
    pool = make_pool(tags=["ssd", "ssd", "fast"], overcommit=2, id=pool_id)
    assert pool.id == pool_id
    assert (pool.scope, pool.cluster_id, pool.state) == ("zone", None, "Enabled")
    assert pool.tags == ("fast", "ssd")
    assert pool.overcommit == 2.0
    assert event_names(pool) == ["Created"]


def test_create_cluster_scoped_pool():
    cluster_id = uuid4()
    pool = make_pool(scope="cluster", cluster_id=cluster_id, url="/var/lib/cloud-engine/p2")
    assert pool.cluster_id == cluster_id


@pytest.mark.parametrize(
    "url", ["nfs://filer-1/export/primary", "rbd://ceph-mon/pool", "/srv/pool", "file:///srv"]
)
def test_create_accepts_paths_and_urls(url):
    assert make_pool(url=url).url == url


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"scope": "region"}, "scope"),
        ({"scope": "cluster"}, "cluster_id"),
        ({"scope": "zone", "cluster_id": uuid4()}, "cluster_id"),
        ({"capacity_bytes": 0}, "capacity_bytes"),
        ({"url": "relative/path"}, "url"),
        ({"url": ""}, "url"),
        ({"url": "file://relative"}, "url"),
        ({"url": "/var/lib/with space"}, "url"),
        ({"overcommit": 0.9}, "overcommit"),
        ({"overcommit": math.nan}, "overcommit"),
        ({"tags": [""]}, "tags"),
    ],
)
def test_create_refuses_invalid_values(overrides, field):
    with pytest.raises(Validation) as info:
        make_pool(**overrides)
    assert info.value.field == field


# State machine -------------------------------------------------------------------

REACH = {"Enabled": [], "Disabled": ["disable"], "Maintenance": ["enter_maintenance"]}
TRANSITIONS = {
    "enable": ({"Disabled"}, "Enabled", "Enabled"),
    "disable": ({"Enabled"}, "Disabled", "Disabled"),
    "enter_maintenance": ({"Enabled", "Disabled"}, "Maintenance", "MaintenanceEntered"),
    "exit_maintenance": ({"Maintenance"}, "Enabled", "MaintenanceExited"),
}
ALLOWED, REFUSED = transition_cases(REACH, TRANSITIONS)


def pool_in(state, **overrides):
    pool = make_pool(**overrides)
    run_steps(pool, REACH[state])
    pool.collect_events()
    return pool


@pytest.mark.parametrize(("state", "action"), ALLOWED)
def test_allowed_transition(state, action):
    assert_transition(pool_in(state), action, TRANSITIONS)


@pytest.mark.parametrize(("state", "action"), REFUSED)
def test_refused_transition(state, action):
    pool = pool_in(state)
    error = assert_refused(pool, InvalidTransition, getattr(pool, action))
    assert error.state == state


# Capacity --------------------------------------------------------------------------


def test_total_applies_overcommit():
    pool = make_pool(capacity_bytes=1000, overcommit=1.15)
    assert pool.total_bytes == 1150
    assert (pool.used_bytes, pool.free_bytes) == (0, 1150)


def test_reserve_and_release_track_usage():
    pool = make_pool(capacity_bytes=1000, overcommit=2.0)
    vol_a, vol_b = uuid4(), uuid4()
    pool.reserve(vol_a, 1500)
    pool.reserve(vol_b, 500)
    assert (pool.used_bytes, pool.free_bytes) == (2000, 0)
    assert pool.reservations == {vol_a: 1500, vol_b: 500}
    pool.release(vol_a)
    assert (pool.used_bytes, pool.free_bytes) == (500, 1500)
    assert event_names(pool) == [
        "Created",
        "StorageReserved",
        "StorageReserved",
        "StorageReleased",
    ]


def test_released_space_can_be_reserved_again():
    pool = make_pool(capacity_bytes=10)
    vol = uuid4()
    pool.reserve(vol, 10)
    pool.release(vol)
    pool.reserve(vol, 10)
    assert pool.free_bytes == 0


def test_reserve_refuses_more_than_free():
    pool = make_pool(capacity_bytes=1000)
    pool.reserve(uuid4(), 999)
    error = assert_refused(pool, CapacityExceeded, lambda: pool.reserve(uuid4(), 2))
    assert error.field == "size_bytes"


def test_reserve_refuses_a_second_reservation_for_the_same_volume():
    pool = make_pool()
    vol = uuid4()
    pool.reserve(vol, 1)
    assert_refused(pool, Conflict, lambda: pool.reserve(vol, 1))


@pytest.mark.parametrize("size", [0, -5])
def test_reserve_refuses_non_positive_size(size):
    pool = make_pool()
    error = assert_refused(pool, Validation, lambda: pool.reserve(uuid4(), size))
    assert error.field == "size_bytes"


@pytest.mark.parametrize("state", ["Disabled", "Maintenance"])
def test_reserve_refused_unless_enabled(state):
    pool = pool_in(state)
    assert_refused(pool, InvalidTransition, lambda: pool.reserve(uuid4(), 1))


@pytest.mark.parametrize("state", list(REACH))
def test_release_allowed_in_every_state(state):
    pool = make_pool()
    vol = uuid4()
    pool.reserve(vol, 1)
    run_steps(pool, REACH[state])
    pool.collect_events()
    pool.release(vol)
    assert event_names(pool) == ["StorageReleased"]


def test_release_refuses_unknown_volume():
    pool = make_pool()
    assert_refused(pool, Conflict, lambda: pool.release(uuid4()))


def test_reservations_view_is_read_only():
    pool = make_pool()
    with pytest.raises(TypeError):
        pool.reservations[uuid4()] = 1


def test_replaying_events_rebuilds_the_same_pool():
    pool = make_pool()
    vol_a, vol_b = uuid4(), uuid4()
    pool.reserve(vol_a, 10)
    pool.reserve(vol_b, 20)
    pool.release(vol_b)
    pool.enter_maintenance()
    assert vars(replayed(pool.collect_events())) == vars(pool)
