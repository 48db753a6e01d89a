import math
from uuid import uuid4

import pytest

from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.host import Reservation
from tests.unit.support import (
    assert_refused,
    assert_transition,
    event_names,
    make_host,
    replayed,
    run_steps,
    transition_cases,
)

# Creation ------------------------------------------------------------------------


def test_create_records_normalised_values():
    host_id = uuid4()
    host = make_host(tags=["ssd", " gpu", "ssd"], cpu_mhz=2400, cpu_overcommit=2, id=host_id)
    assert host.id == host_id
    assert host.state == "Enabled"
    assert host.tags == ("gpu", "ssd")
    assert host.cpu_mhz == 2400
    assert host.cpu_overcommit == 2.0
    assert isinstance(host.cpu_overcommit, float)
    assert host.reservations == {}
    assert event_names(host) == ["Created"]


def test_create_without_id_gets_a_fresh_one():
    assert make_host().id != make_host().id


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu+tcp://10.0.0.5/system", "test:///default"])
def test_create_accepts_libvirt_uris(uri):
    assert make_host(libvirt_uri=uri).libvirt_uri == uri


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": " "}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"cpu_cores": 0}, "cpu_cores"),
        ({"cpu_mhz": 0}, "cpu_mhz"),
        ({"ram_mb": -1}, "ram_mb"),
        ({"cpu_overcommit": 0.99}, "cpu_overcommit"),
        ({"cpu_overcommit": math.inf}, "cpu_overcommit"),
        ({"ram_overcommit": math.nan}, "ram_overcommit"),
        ({"libvirt_uri": ""}, "libvirt_uri"),
        ({"libvirt_uri": "xen:///system"}, "libvirt_uri"),
        ({"libvirt_uri": "qemu+ssh://host/ system"}, "libvirt_uri"),
        ({"tags": ["ok", "  "]}, "tags"),
        ({"tags": ["t" * 65]}, "tags"),
    ],
)
def test_create_refuses_invalid_values(overrides, field):
    with pytest.raises(Validation) as info:
        make_host(**overrides)
    assert info.value.field == field


# State machine -------------------------------------------------------------------

REACH = {
    "Enabled": [],
    "Disabled": ["disable"],
    "Maintenance": ["enter_maintenance"],
    "Down": ["declare_down"],
}
TRANSITIONS = {
    "enable": ({"Disabled"}, "Enabled", "Enabled"),
    "disable": ({"Enabled"}, "Disabled", "Disabled"),
    "enter_maintenance": ({"Enabled", "Disabled"}, "Maintenance", "MaintenanceEntered"),
    "exit_maintenance": ({"Maintenance"}, "Enabled", "MaintenanceExited"),
    "declare_down": ({"Enabled", "Disabled", "Maintenance"}, "Down", "DeclaredDown"),
    "declare_up": ({"Down"}, "Enabled", "DeclaredUp"),
}
ALLOWED, REFUSED = transition_cases(REACH, TRANSITIONS)


def host_in(state):
    host = make_host()
    run_steps(host, REACH[state])
    assert host.state == state
    host.collect_events()
    return host


@pytest.mark.parametrize(("state", "action"), ALLOWED)
def test_allowed_transition(state, action):
    assert_transition(host_in(state), action, TRANSITIONS)


@pytest.mark.parametrize(("state", "action"), REFUSED)
def test_refused_transition(state, action):
    host = host_in(state)
    error = assert_refused(host, InvalidTransition, getattr(host, action))
    assert error.state == state


def test_down_host_comes_back_enabled_from_maintenance():
    host = host_in("Maintenance")
    host.declare_down()
    host.declare_up()
    assert host.state == "Enabled"


# Capacity --------------------------------------------------------------------------


def test_totals_apply_overcommit():
    host = make_host(cpu_cores=4, ram_mb=1000, cpu_overcommit=2.0, ram_overcommit=1.5)
    assert host.cpus_total == 8.0
    assert host.ram_total_mb == 1500
    assert (host.cpus_free, host.ram_free_mb) == (8.0, 1500)


def test_fractional_overcommit_has_no_float_noise():
    # 100 * 1.15 == 114.99999999999999 in binary floating point.
    host = make_host(cpu_cores=100, cpu_overcommit=1.15, ram_mb=1001, ram_overcommit=1.5)
    assert host.cpus_total == 115.0
    assert host.ram_total_mb == 1501  # 1501.5 rounds down to whole MiB
    host.reserve(uuid4(), 115, 1501)
    assert host.cpus_free == 0.0
    assert host.ram_free_mb == 0


def test_reserve_and_release_track_usage():
    host = make_host(cpu_cores=4, ram_mb=1000, cpu_overcommit=2.0)
    vm_a, vm_b = uuid4(), uuid4()
    host.reserve(vm_a, 3, 400)
    host.reserve(vm_b, 5, 600)
    assert (host.cpus_used, host.ram_used_mb) == (8, 1000)
    assert (host.cpus_free, host.ram_free_mb) == (0.0, 0)
    assert host.reservations[vm_a] == Reservation(cpus=3, ram_mb=400)
    host.release(vm_a)
    assert (host.cpus_used, host.ram_used_mb) == (5, 600)
    assert vm_a not in host.reservations
    assert event_names(host) == [
        "Created",
        "CapacityReserved",
        "CapacityReserved",
        "CapacityReleased",
    ]


def test_released_capacity_can_be_reserved_again():
    host = make_host(cpu_cores=2, ram_mb=512)
    vm = uuid4()
    host.reserve(vm, 2, 512)
    host.release(vm)
    host.reserve(vm, 2, 512)
    assert host.cpus_used == 2


def test_reservations_view_is_read_only():
    host = make_host()
    with pytest.raises(TypeError):
        host.reservations[uuid4()] = Reservation(cpus=1, ram_mb=1)


def test_reserve_refuses_too_many_cpus():
    host = make_host(cpu_cores=4, cpu_overcommit=2.0)
    host.reserve(uuid4(), 6, 100)
    error = assert_refused(host, CapacityExceeded, lambda: host.reserve(uuid4(), 3, 100))
    assert error.field == "cpus"


def test_reserve_refuses_too_much_ram():
    host = make_host(ram_mb=1000, ram_overcommit=1.5)
    host.reserve(uuid4(), 1, 1400)
    error = assert_refused(host, CapacityExceeded, lambda: host.reserve(uuid4(), 1, 101))
    assert error.field == "ram_mb"


def test_reserve_refuses_a_second_reservation_for_the_same_vm():
    host = make_host()
    vm = uuid4()
    host.reserve(vm, 1, 100)
    assert_refused(host, Conflict, lambda: host.reserve(vm, 1, 100))


@pytest.mark.parametrize(("cpus", "ram_mb", "field"), [(0, 100, "cpus"), (1, 0, "ram_mb")])
def test_reserve_refuses_non_positive_amounts(cpus, ram_mb, field):
    host = make_host()
    error = assert_refused(host, Validation, lambda: host.reserve(uuid4(), cpus, ram_mb))
    assert error.field == field


@pytest.mark.parametrize("state", ["Disabled", "Maintenance", "Down"])
def test_reserve_refused_unless_enabled(state):
    host = host_in(state)
    assert_refused(host, InvalidTransition, lambda: host.reserve(uuid4(), 1, 100))


@pytest.mark.parametrize("state", list(REACH))
def test_release_allowed_in_every_state(state):
    host = make_host()
    vm = uuid4()
    host.reserve(vm, 1, 100)
    run_steps(host, REACH[state])
    host.collect_events()
    host.release(vm)
    assert host.cpus_used == 0
    assert event_names(host) == ["CapacityReleased"]


def test_release_refuses_unknown_vm():
    host = make_host()
    host.reserve(uuid4(), 1, 100)
    assert_refused(host, Conflict, lambda: host.release(uuid4()))


# Overcommit ------------------------------------------------------------------------


def test_update_overcommit_changes_totals():
    host = make_host(cpu_cores=4, ram_mb=1000)
    host.update_overcommit(3.0, 1.25)
    assert (host.cpus_total, host.ram_total_mb) == (12.0, 1250)
    assert event_names(host)[-1] == "OvercommitUpdated"


def test_update_overcommit_may_shrink_down_to_current_usage():
    host = make_host(cpu_cores=4, ram_mb=1000, cpu_overcommit=2.0, ram_overcommit=2.0)
    host.reserve(uuid4(), 6, 1500)
    host.update_overcommit(1.5, 1.5)
    assert (host.cpus_free, host.ram_free_mb) == (0.0, 0)


@pytest.mark.parametrize(
    ("cpu", "ram", "field"), [(1.0, 2.0, "cpu_overcommit"), (2.0, 1.0, "ram_overcommit")]
)
def test_update_overcommit_refused_below_current_usage(cpu, ram, field):
    host = make_host(cpu_cores=4, ram_mb=1000, cpu_overcommit=2.0, ram_overcommit=2.0)
    host.reserve(uuid4(), 5, 1001)
    error = assert_refused(host, CapacityExceeded, lambda: host.update_overcommit(cpu, ram))
    assert error.field == field


@pytest.mark.parametrize(
    ("cpu", "ram", "field"), [(0.5, 1.0, "cpu_overcommit"), (1.0, math.inf, "ram_overcommit")]
)
def test_update_overcommit_refuses_invalid_factors(cpu, ram, field):
    host = make_host()
    error = assert_refused(host, Validation, lambda: host.update_overcommit(cpu, ram))
    assert error.field == field


def test_replaying_events_rebuilds_the_same_host():
    host = make_host(cpu_overcommit=2.0)
    vm_a, vm_b = uuid4(), uuid4()
    host.reserve(vm_a, 2, 100)
    host.reserve(vm_b, 3, 200)
    host.release(vm_a)
    host.update_overcommit(4.0, 1.0)
    host.disable()
    copy_of_host = replayed(host.collect_events())
    assert vars(copy_of_host) == vars(host)
    assert copy_of_host.reservations == {vm_b: Reservation(cpus=3, ram_mb=200)}
