"""Host liveness and a VM's record following its hypervisor, on the
aggregates (automation decides; these record)."""

import dataclasses
from uuid import uuid4

import msgspec
import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from tests.unit.support import make_host, replayed


def test_a_host_goes_suspect_down_fenced_and_up_again():
    host = make_host()
    assert (host.liveness, host.fenced) == ("Up", False)
    host.suspect("libvirt unreachable")
    with pytest.raises(InvalidTransition):
        host.reserve(uuid4(), 1, 64)  # a host not known alive takes nothing
    host.confirm_down("heartbeat 9 s old", None)
    host.record_fenced("lab-power")
    host.record_fenced("lab-power")  # once
    assert (host.liveness, host.fenced) == ("Down", True)
    assert host.answered() and host.answering_since is not None
    assert not host.answered()  # noted once
    host.declare_alive("fenced, then healthy for 10 s")
    assert (host.liveness, host.fenced, host.answering_since) == ("Up", False, None)
    host.reserve(uuid4(), 1, 64)
    events = host.collect_events()
    names = [type(e).__name__ for e in events]
    assert names[1:6] == ["Suspected", "Down", "Fenced", "Answered", "Up"]
    again = replayed(events, MsgspecMapper())  # through the stored form
    assert (again.liveness, again.fenced, again.fenced_at) == ("Up", False, host.fenced_at)


def test_a_suspect_host_that_answers_is_up_at_once_and_down_needs_suspect():
    host = make_host()
    with pytest.raises(InvalidTransition):
        host.confirm_down("no heartbeat", None)
    with pytest.raises(InvalidTransition):
        host.record_fenced("lab-power")
    with pytest.raises(InvalidTransition):
        host.declare_alive("admin")
    host.suspect("libvirt unreachable")
    assert host.answered()
    assert host.liveness == "Up"


def test_a_shared_pool_a_host_lacks_is_recorded_on_it_and_changes_nothing_else():
    host = make_host()
    pool = uuid4()
    with pytest.raises(Validation):
        host.shared_pool_unavailable(pool, " ")
    host.shared_pool_unavailable(pool, "cannot open directory: permission denied")
    assert (host.liveness, host.state) == ("Up", "Enabled")
    event = host.collect_events()[-1]
    assert type(event).__name__ == "SharedPoolUnavailable"
    assert (event.pool_id, event.observed) == (  # type: ignore[attr-defined]
        pool,
        "cannot open directory: permission denied",
    )


def _running_vm() -> VirtualMachine:
    vm = VirtualMachine.create(
        "acme", "web", uuid4(), uuid4(), VmSpec(cpus=1, ram_mb=128, root_disk_gb=1)
    )
    host = uuid4()
    vm.place(host, uuid4())
    vm.start_requested(host)
    vm.mark_running()
    return vm


def test_a_running_vm_converges_to_stopped_and_back_with_the_reason():
    vm = _running_vm()
    host = vm.host_id
    vm.set_ha(True, 7)
    vm.converge("Stopped", "its domain was found absent")
    assert (vm.state, vm.host_id, vm.last_host_id) == ("Stopped", None, host)
    assert vm.converged_reason == "its domain was found absent"
    with pytest.raises(InvalidTransition):
        vm.converge("Stopped", "again")
    with pytest.raises(InvalidTransition):
        vm.converge("Running", "no host named")
    vm.converge("Running", "its domain runs", host)
    assert (vm.state, vm.host_id, vm.ha, vm.ha_priority) == ("Running", host, True, 7)
    again = replayed(vm.collect_events(), MsgspecMapper())
    assert (again.state, again.ha_priority, again.converged_reason) == (
        "Running",
        7,
        "its domain runs",
    )


def test_a_vm_created_before_user_data_and_ssh_keys_still_decodes():
    # Records written before those fields existed lack them.
    vm = VirtualMachine.create(
        "acme", "old", uuid4(), uuid4(), VmSpec(cpus=1, ram_mb=128, root_disk_gb=1)
    )
    mapper = MsgspecMapper()
    [created] = vm.collect_events()
    stored = mapper.to_stored_event(created)
    state = msgspec.json.decode(stored.state)
    del state["user_data"], state["ssh_keys"]
    old = dataclasses.replace(stored, state=msgspec.json.encode(state))
    back = replayed([mapper.to_domain_event(old)])
    assert (back.name, back.user_data, back.ssh_keys) == ("old", None, ())


def test_a_timed_out_start_is_unsettled_and_converges_either_way():
    vm = VirtualMachine.create(
        "acme", "web", uuid4(), uuid4(), VmSpec(cpus=1, ram_mb=128, root_disk_gb=1)
    )
    host = uuid4()
    vm.place(host, uuid4())
    vm.start_requested(host)
    vm.timed_out("step start got no answer within 600 s")
    assert (vm.state, vm.unsettled, vm.host_id, vm.last_host_id) == ("Error", True, None, host)
    assert vm.is_unsettled()
    with pytest.raises(InvalidTransition):
        vm.timed_out("again")  # only a start or a stop times out
    vm.converge("Running", "its domain was found running", host)
    assert (vm.state, vm.unsettled, vm.host_id) == ("Running", False, host)
    again = replayed(vm.collect_events(), MsgspecMapper())
    assert (again.state, again.unsettled) == ("Running", False)


def test_a_timed_out_stop_converges_to_stopped_and_a_plain_error_does_not():
    vm = _running_vm()
    host = vm.host_id
    vm.stop_requested(False)
    vm.timed_out("step stop got no answer within 600 s")
    assert (vm.state, vm.unsettled) == ("Error", True)
    vm.converge("Stopped", "its domain was found shutoff")
    assert (vm.state, vm.unsettled, vm.last_host_id) == ("Stopped", False, host)

    broken = _running_vm()
    broken.stop_requested(False)
    broken.fail("the disk is gone")  # an answer: a failure, not an unknown outcome
    assert (broken.state, broken.is_unsettled()) == ("Error", False)
    with pytest.raises(InvalidTransition):
        broken.converge("Stopped", "found shutoff")
    with pytest.raises(InvalidTransition):
        broken.converge("Running", "found running", host)
