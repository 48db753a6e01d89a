"""compare(): the engine's record of a host's VMs against the domains listed
on it."""

import uuid
from uuid import UUID

import msgspec
import pytest

from cloud_engine.effectors.compute.spec import DomainState
from cloud_engine.effectors.desired import VmSize, VmView
from cloud_engine.effectors.drift import Drift, compare, drift_operation_id

HOST = uuid.uuid4()
OTHER_HOST = uuid.uuid4()


def vm(state: str, *, host_id: UUID | None = HOST, target: UUID | None = None) -> VmView:
    return VmView(
        id=uuid.uuid4(),
        version=7,
        name="web",
        zone_id=uuid.uuid4(),
        state=state,
        spec=VmSize(cpus=1, ram_mb=64, root_disk_gb=1),
        host_id=host_id,
        migration_target_id=target,
    )


def domain(of: VmView | UUID, state: str, name: str | None = None) -> DomainState:
    uid = of.id if isinstance(of, VmView) else of
    return DomainState(
        uuid=uid,
        exists=state != "absent",
        state=state,  # type: ignore[arg-type]
        name=name or f"ce-vm-{uid.hex[:12]}",
    )


@pytest.mark.parametrize("observed", ["shutoff", "crashed", "paused"])
def test_a_running_vm_whose_domain_is_not_running_drifts(observed):
    v = vm("Running")
    assert compare(HOST, [v], [domain(v, observed)]) == [
        Drift(
            kind="drift.vm_state",
            aggregate_id=v.id,
            observed=observed,
            expected="running",
            version=7,
        )
    ]


def test_a_running_vm_without_a_domain_drifts_as_absent():
    v = vm("Running")
    (drift,) = compare(HOST, [v], [])
    assert (drift.kind, drift.observed, drift.expected) == ("drift.vm_state", "absent", "running")
    # list_domains never returns absent entries, but one must not count as a domain.
    assert compare(HOST, [v], [domain(v, "absent")]) == [drift]


def test_a_running_vm_with_a_running_domain_is_fine():
    v = vm("Running")
    assert compare(HOST, [v], [domain(v, "running")]) == []


@pytest.mark.parametrize("state", ["Stopped", "Allocated", "Destroyed"])
def test_a_vm_that_must_not_run_but_runs_drifts(state):
    # Stopped and Destroyed VMs have released host_id (last_host_id is this host).
    v = vm(state, host_id=HOST if state == "Allocated" else None)
    (drift,) = compare(HOST, [v], [domain(v, "running")])
    assert drift == Drift(
        kind="drift.vm_state", aggregate_id=v.id, observed="running", expected="shutoff", version=7
    )


@pytest.mark.parametrize("state", ["Stopped", "Allocated", "Destroyed"])
@pytest.mark.parametrize("observed", ["shutoff", "absent", "crashed"])
def test_a_vm_that_must_not_run_and_does_not_is_fine(state, observed):
    v = vm(state, host_id=None if state != "Allocated" else HOST)
    assert compare(HOST, [v], [domain(v, observed)]) == []


def test_a_destroyed_vm_s_paused_domain_drifts_a_stopped_one_s_does_not():
    # The destroy gave its memory back; a stopped VM's paused domain is
    # someone's decision on the host (reported by nobody, as before).
    gone, stopped = vm("Destroyed", host_id=None), vm("Stopped", host_id=None)
    (drift,) = compare(HOST, [gone], [domain(gone, "paused")])
    assert (drift.observed, drift.expected) == ("paused", "shutoff")
    assert compare(HOST, [stopped], [domain(stopped, "paused")]) == []


@pytest.mark.parametrize("state", ["Starting", "Stopping", "Migrating", "Expunging", "Error"])
@pytest.mark.parametrize("observed", ["running", "shutoff", "crashed", "absent"])
def test_transitional_and_error_states_are_not_judged(state, observed):
    v = vm(state)
    assert compare(HOST, [v], [domain(v, observed)]) == []


def test_an_expunged_vm_whose_domain_is_left_behind_drifts():
    v = vm("Expunged", host_id=None)
    (drift,) = compare(HOST, [v], [domain(v, "shutoff")])
    assert (drift.kind, drift.observed, drift.expected) == ("drift.vm_state", "shutoff", "absent")
    assert compare(HOST, [v], []) == []


def test_a_domain_no_vm_claims_is_unknown_and_its_name_is_reported():
    stray = uuid.uuid4()
    drifts = compare(HOST, [], [domain(stray, "running", name="someone-elses")])
    assert drifts == [
        Drift(
            kind="drift.unknown_domain",
            aggregate_id=stray,
            observed="running name=someone-elses",
        )
    ]


def test_a_domain_migrating_to_this_host_is_not_unknown():
    v = vm("Migrating", host_id=OTHER_HOST, target=HOST)
    assert compare(HOST, [v], [domain(v, "running")]) == []
    assert compare(OTHER_HOST, [v], [domain(v, "running")]) == []


def test_a_domain_of_a_vm_running_on_another_host_is_unknown_here():
    # Migrated away (this host is its last host), but a copy stayed defined.
    v = vm("Running", host_id=OTHER_HOST)
    (drift,) = compare(HOST, [v], [domain(v, "shutoff")])
    assert (drift.kind, drift.aggregate_id) == ("drift.unknown_domain", v.id)
    assert drift.observed.startswith("shutoff name=")


def test_several_vms_and_domains_at_once():
    running_ok = vm("Running")
    crashed = vm("Running")
    stopped_running = vm("Stopped", host_id=None)
    starting = vm("Starting")
    stray = uuid.uuid4()
    drifts = compare(
        HOST,
        [running_ok, crashed, stopped_running, starting],
        [
            domain(running_ok, "running"),
            domain(crashed, "crashed"),
            domain(stopped_running, "running"),
            domain(starting, "shutoff"),
            domain(stray, "shutoff"),
        ],
    )
    assert {(d.kind, d.aggregate_id, d.observed) for d in drifts} == {
        ("drift.vm_state", crashed.id, "crashed"),
        ("drift.vm_state", stopped_running.id, "running"),
        ("drift.unknown_domain", stray, f"shutoff name=ce-vm-{stray.hex[:12]}"),
    }


def test_the_same_drift_has_the_same_operation_id_and_a_later_version_a_new_one():
    v = vm("Running")
    first = compare(HOST, [v], [domain(v, "shutoff")])[0]
    again = compare(HOST, [v], [domain(v, "shutoff")])[0]
    assert drift_operation_id(HOST, first) == drift_operation_id(HOST, again)
    crashed = compare(HOST, [v], [domain(v, "crashed")])[0]
    assert drift_operation_id(HOST, crashed) != drift_operation_id(HOST, first)
    assert drift_operation_id(OTHER_HOST, first) != drift_operation_id(HOST, first)
    recorded = msgspec.structs.replace(v, version=8)
    later = compare(HOST, [recorded], [domain(v, "shutoff")])[0]
    assert drift_operation_id(HOST, later) != drift_operation_id(HOST, first)


@pytest.mark.parametrize("observed", ["running", "shutoff", "absent", "paused"])
def test_an_unsettled_error_vm_is_reported_whatever_its_domain_shows(observed):
    v = msgspec.structs.replace(vm("Error", host_id=None), unsettled=True)
    domains = [] if observed == "absent" else [domain(v, observed)]
    assert compare(HOST, [v], domains) == [
        Drift(
            kind="drift.vm_state",
            aggregate_id=v.id,
            observed=observed,
            expected="Error (unsettled)",
            version=7,
        )
    ]


@pytest.mark.parametrize("observed", ["running", "shutoff", "absent", "paused"])
def test_a_timed_out_migration_is_left_to_its_works_answer(observed):
    # One host's view is no answer: running on the source may be the
    # migration still under way, and one settled on the destination from
    # here would leave the source's paused leftover (only the migration's
    # settle removes it). The effector's answer, asked until it can tell,
    # settles it.
    other = uuid.uuid4()
    v = msgspec.structs.replace(
        vm("Error", host_id=None, target=other), unsettled=True, last_host_id=HOST
    )
    domains = [] if observed == "absent" else [domain(v, observed)]
    assert compare(HOST, [v], domains) == []
    assert compare(other, [v], domains) == []


def test_a_plain_error_vm_is_left_to_an_operator():
    v = vm("Error", host_id=None)
    assert compare(HOST, [v], [domain(v, "running")]) == []
