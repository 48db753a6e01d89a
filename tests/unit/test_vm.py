from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.metadata import EventMeta, bound_meta
from cloud_engine.engine.virtual.vm import VM_STATES, VirtualMachine, VmSpec
from tests.unit.support import (
    allowed_cases,
    assert_refused,
    drive,
    event_names,
    refused_cases,
    replayed,
)

HOST_A = uuid4()
HOST_B = uuid4()
POOL = uuid4()
SPEC = VmSpec(cpus=2, ram_mb=2048, root_disk_gb=20, tags=("ssd",))


def make_vm(**overrides):
    values = {
        "account": "acme",
        "name": "web-1",
        "zone_id": uuid4(),
        "template_id": uuid4(),
        "spec": SPEC,
        "network_ids": (uuid4(),),
        "affinity_group": None,
    }
    values.update(overrides)
    return VirtualMachine.create(**values)


# How to reach each state; "Placed" is Allocated with a placement recorded.
PATHS = {
    "Allocated": [],
    "Placed": [lambda vm: vm.place(HOST_A, POOL)],
    "Starting": ["Placed", lambda vm: vm.start_requested(HOST_A)],
    "Running": ["Starting", lambda vm: vm.mark_running()],
    "Stopping": ["Running", lambda vm: vm.stop_requested()],
    "Stopped": ["Stopping", lambda vm: vm.mark_stopped()],
    "Migrating": ["Running", lambda vm: vm.migrate_requested(HOST_B)],
    "Destroyed": ["Stopped", lambda vm: vm.destroy()],
    "Expunging": ["Destroyed", lambda vm: vm.expunge_requested()],
    "Expunged": ["Expunging", lambda vm: vm.expunged()],
    "Error": ["Starting", lambda vm: vm.fail("boom")],
}


def vm_in(state):
    vm = make_vm()
    drive(vm, PATHS, state)
    vm.collect_events()
    return vm


ACTIONS = {
    "place": lambda vm: vm.place(HOST_A, POOL),
    "start_requested": lambda vm: vm.start_requested(HOST_A),
    "mark_running": lambda vm: vm.mark_running(),
    "stop_requested": lambda vm: vm.stop_requested(forced=True),
    "mark_stopped": lambda vm: vm.mark_stopped(),
    "reboot": lambda vm: vm.reboot(),
    "migrate_requested": lambda vm: vm.migrate_requested(HOST_B),
    "migration_completed": lambda vm: vm.migration_completed(),
    "migration_failed": lambda vm: vm.migration_failed("link down"),
    "destroy": lambda vm: vm.destroy(),
    "recover": lambda vm: vm.recover(),
    "expunge_requested": lambda vm: vm.expunge_requested(),
    "expunged": lambda vm: vm.expunged(),
    "fail": lambda vm: vm.fail("boom"),
}

# Written independently of engine.virtual.vm.VM_TRANSITIONS on purpose.
ALLOWED = {
    "place": {"Allocated"},
    "start_requested": {"Placed", "Stopped"},
    "mark_running": {"Starting"},
    "stop_requested": {"Running"},
    "mark_stopped": {"Stopping"},
    "reboot": {"Running"},
    "migrate_requested": {"Running", "Stopped"},
    "migration_completed": {"Migrating"},
    "migration_failed": {"Migrating"},
    "destroy": {"Allocated", "Placed", "Stopped", "Running", "Error"},
    "recover": {"Destroyed"},
    "expunge_requested": {"Destroyed"},
    "expunged": {"Expunging"},
    "fail": {"Allocated", "Placed", "Starting", "Stopping", "Migrating"},
}
OUTCOME = {
    "place": ("Allocated", "Placed"),
    "start_requested": ("Starting", "StartRequested"),
    "mark_running": ("Running", "Started"),
    "stop_requested": ("Stopping", "StopRequested"),
    "mark_stopped": ("Stopped", "Stopped"),
    "reboot": ("Running", "Rebooted"),
    "migrate_requested": ("Migrating", "MigrationRequested"),
    "migration_completed": ("Running", "MigrationCompleted"),
    "migration_failed": ("Running", "MigrationFailed"),
    "destroy": ("Destroyed", "Destroyed"),
    "recover": ("Stopped", "Recovered"),
    "expunge_requested": ("Expunging", "ExpungeRequested"),
    "expunged": ("Expunged", "Expunged"),
    "fail": ("Error", "Failed"),
}
ALLOWED_CASES = allowed_cases(ALLOWED)
REFUSED_CASES = refused_cases(ALLOWED, PATHS)


def test_paths_cover_every_declared_state():
    assert set(PATHS) - {"Placed"} == set(VM_STATES)
    for state in VM_STATES:
        assert vm_in(state).state == state


@pytest.mark.parametrize(("action", "source"), ALLOWED_CASES)
def test_allowed_transition_emits_one_event(action, source):
    vm = vm_in(source)
    ACTIONS[action](vm)
    target, event_name = OUTCOME[action]
    assert vm.state == target
    assert event_names(vm) == [event_name]


@pytest.mark.parametrize(("action", "source"), REFUSED_CASES)
def test_refused_transition_records_nothing(action, source):
    vm = vm_in(source)
    error = assert_refused(vm, InvalidTransition, lambda: ACTIONS[action](vm))
    assert error.action == action
    assert error.state == vm.state


# Creation ------------------------------------------------------------------------


def test_create_records_values_and_starts_allocated():
    net = uuid4()
    vm = make_vm(network_ids=(net,), affinity_group="web")
    assert vm.state == "Allocated"
    assert (vm.spec, vm.network_ids, vm.affinity_group) == (SPEC, (net,), "web")
    assert vm.host_id is None
    assert not vm.is_placed()
    [created] = vm.collect_events()
    assert type(created).__name__ == "Created"
    assert created.spec == SPEC


def test_create_with_given_id():
    given = uuid4()
    vm = VirtualMachine.create("acme", "web-1", uuid4(), uuid4(), SPEC, id=given)
    assert vm.id == given
    assert replayed(vm.collect_events()).id == given


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"account": " "}, "account"),
        ({"name": ""}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"spec": VmSpec(cpus=0, ram_mb=2048, root_disk_gb=20)}, "spec.cpus"),
        ({"spec": VmSpec(cpus=1, ram_mb=63, root_disk_gb=20)}, "spec.ram_mb"),
        ({"spec": VmSpec(cpus=1, ram_mb=64, root_disk_gb=0)}, "spec.root_disk_gb"),
        ({"spec": VmSpec(cpus=1, ram_mb=64, root_disk_gb=1, tags=(" ",))}, "spec.tags"),
        ({"network_ids": (HOST_A, HOST_A)}, "network_ids"),
        ({"affinity_group": " "}, "affinity_group"),
    ],
)
def test_create_validates(overrides, field):
    with pytest.raises(Validation) as info:
        make_vm(**overrides)
    assert info.value.field == field


# Rules beyond the state table ----------------------------------------------------


def test_place_twice_is_refused():
    vm = vm_in("Placed")
    assert vm.is_placed()
    assert vm.pool_id == POOL
    error = assert_refused(vm, InvalidTransition, lambda: vm.place(HOST_B, POOL))
    assert error.action == "place"


def test_start_of_unplaced_vm_is_refused():
    vm = vm_in("Allocated")
    assert_refused(vm, InvalidTransition, lambda: vm.start_requested(HOST_A))


def test_start_must_use_the_placed_host():
    vm = vm_in("Placed")
    error = assert_refused(vm, Validation, lambda: vm.start_requested(HOST_B))
    assert error.field == "host_id"


def test_restart_may_pick_another_host():
    vm = vm_in("Stopped")
    vm.start_requested(HOST_B)
    assert (vm.host_id, vm.last_host_id) == (HOST_B, HOST_A)


def test_migration_to_the_current_host_is_refused():
    vm = vm_in("Running")
    error = assert_refused(vm, Validation, lambda: vm.migrate_requested(HOST_A))
    assert error.field == "target_host_id"


def test_migration_completed_moves_to_target():
    vm = vm_in("Migrating")
    assert vm.migration_target_id == HOST_B
    vm.migration_completed()
    assert (vm.host_id, vm.last_host_id, vm.migration_target_id) == (HOST_B, HOST_A, None)
    [event] = vm.collect_events()
    assert event.host_id == HOST_B


def test_migration_failed_stays_on_source():
    vm = vm_in("Migrating")
    vm.migration_failed("link down")
    assert (vm.state, vm.host_id, vm.migration_target_id) == ("Running", HOST_A, None)
    assert vm.last_error == "link down"


@pytest.mark.parametrize("action", ["fail", "migration_failed"])
def test_reason_required(action):
    vm = vm_in("Migrating")
    error = assert_refused(vm, Validation, lambda: getattr(vm, action)("  "))
    assert error.field == "reason"


def test_forced_stop_is_recorded_and_reset_on_start():
    vm = vm_in("Running")
    vm.stop_requested(forced=True)
    assert vm.forced_stop
    vm.mark_stopped()
    vm.start_requested(HOST_A)
    assert not vm.forced_stop


@pytest.mark.parametrize("source", ["Stopped", "Destroyed", "Error"])
def test_host_is_released_when_leaving_it(source):
    vm = vm_in(source)
    assert vm.host_id is None
    assert vm.last_host_id == HOST_A


def test_destroy_of_running_vm_releases_host_and_recover_stops_it():
    vm = vm_in("Running")
    vm.destroy()
    assert (vm.host_id, vm.last_host_id) == (None, HOST_A)
    vm.recover()
    assert vm.state == "Stopped"


def test_error_recovers_only_through_destroy_and_recover():
    vm = vm_in("Error")
    assert vm.last_error == "boom"
    vm.destroy()
    vm.recover()
    vm.start_requested(HOST_B)
    assert vm.state == "Starting"


def test_replay_reproduces_the_aggregate():
    vm = make_vm()
    drive(vm, PATHS, "Migrating")
    vm.migration_completed()
    vm.reboot()
    copy_ = replayed(vm.collect_events())
    assert vars(copy_) == vars(vm)


def test_events_carry_bound_metadata():
    vm = vm_in("Allocated")
    meta = EventMeta(actor="alice", request_id="r-1")
    with bound_meta(meta):
        vm.place(HOST_A, POOL)
    [event] = vm.collect_events()
    assert event.meta == meta


def test_drift_is_recorded_in_any_state_and_leaves_the_state_alone():
    vm = vm_in("Running")
    vm.observe_drift("shutoff", "running")
    assert vm.state == "Running"
    assert vm.last_error == "the hypervisor shows shutoff; the engine recorded running"
    with pytest.raises(Validation):
        vm.observe_drift(" ", "running")
