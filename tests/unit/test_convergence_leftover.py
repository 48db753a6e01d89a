"""A destroyed VM's domain found running (an expunged VM's left defined):
convergence asks the engine to have it stopped again, once the request that
should have done it is older than the grace, and never while the VM moved
on, an operation holds it, or its host is not Up (automation/convergence.py
behind fakes; the command's handler and the event on the aggregate)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from cloud_engine.automation.convergence import Converger
from cloud_engine.bus.consumer import ConsumerConfig
from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.commands.liveness import RequestVmDomainStop
from cloud_engine.engine.errors import Conflict, InvalidTransition
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.operations.guard import acquire, release
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from tests.unit.support import assert_command_refused, assert_refused, make_host, replayed

GRACE_S = 30.0


class Fakes:
    """The store and the command service the converger uses, around one VM
    (its events kept, with their timestamps) and its host."""

    def __init__(self, vm: VirtualMachine, host: Host) -> None:
        self.vm, self.host = vm, host
        self.events: list[Any] = []
        self.keep()
        self.sent: list[tuple[Any, str | None]] = []

    def keep(self) -> None:
        self.events += self.vm.collect_events()

    # store
    def load(self, aggregate_id: UUID) -> Any:
        return {self.vm.id: self.vm, self.host.id: self.host}.get(aggregate_id)

    def events_of(self, aggregate_id: UUID) -> list[Any]:
        return list(self.events) if aggregate_id == self.vm.id else []

    # service: the command applied to the VM, as the engine would
    async def execute_async(self, command: Any, context: Any) -> None:
        self.sent.append((command, context.idempotency_key))
        if isinstance(command, RequestVmDomainStop):
            self.vm.request_domain_stop(command.reason)
            self.keep()


def destroyed_vm(host: Host) -> VirtualMachine:
    vm = VirtualMachine.create(
        "acme", "web", uuid4(), uuid4(), VmSpec(cpus=1, ram_mb=128, root_disk_gb=1)
    )
    vm.place(host.id, uuid4())
    vm.start_requested(host.id)
    vm.mark_running()
    vm.destroy()
    return vm


def converger(fakes: Fakes, seconds_after: float) -> Converger:
    """A converger whose clock reads the VM's last event's time plus seconds_after."""
    now = fakes.events[-1].timestamp + timedelta(seconds=seconds_after)
    return Converger(
        fakes,  # type: ignore[arg-type]
        fakes,  # type: ignore[arg-type]
        ConsumerConfig(bootstrap="unused:9092", group_id="g", topics=[]),
        stop_grace_s=GRACE_S,
        now=lambda: now,
    )


def decide(fakes: Fakes, observed: str, seconds_after: float) -> Converger:
    c = converger(fakes, seconds_after)
    asyncio.run(c.decide(fakes.vm, observed))
    return c


@pytest.mark.parametrize("observed", ["running", "paused"])
def test_a_destroyed_vm_s_domain_left_on_is_asked_to_stop_after_the_grace(observed):
    # Paused holds the memory the destroy gave back as running does.
    host = make_host()
    fakes = Fakes(destroyed_vm(host), host)
    version = fakes.vm.version
    c = decide(fakes, observed, GRACE_S + 1)
    [(command, key)] = fakes.sent
    assert command == RequestVmDomainStop(
        vm_id=fakes.vm.id, reason=command.reason, expected_version=version
    )
    assert f"found {observed} on host {host.name}" in command.reason
    assert "power it off" in command.reason and "undefine" not in command.reason
    assert key == f"converge/{fakes.vm.id}/{version}/domain-stop"
    assert c.domain_stops == 1
    assert fakes.vm.state == "Destroyed"  # the state stays


def test_within_the_grace_of_the_destroy_nothing_is_asked():
    # The destroy's work may still wait in an effector's backlog.
    host = make_host()
    fakes = Fakes(destroyed_vm(host), host)
    c = decide(fakes, "running", GRACE_S - 1)
    assert fakes.sent == [] and c.domain_stops == 0


def test_the_grace_counts_from_the_last_ask_not_the_destroy():
    host = make_host()
    fakes = Fakes(destroyed_vm(host), host)
    decide(fakes, "running", GRACE_S + 1)
    assert len(fakes.sent) == 1
    # The next round, soon after the ask: not asked again...
    decide(fakes, "running", 5)
    assert len(fakes.sent) == 1
    # ... but once the ask had its grace and the domain still runs.
    decide(fakes, "running", GRACE_S + 1)
    assert len(fakes.sent) == 2


@pytest.mark.parametrize("observed", ["shutoff", "absent", "crashed"])
def test_a_destroyed_vm_s_domain_not_running_is_left_alone(observed):
    host = make_host()
    fakes = Fakes(destroyed_vm(host), host)
    decide(fakes, observed, GRACE_S + 1)
    assert fakes.sent == []


def test_an_expunged_vm_s_domain_left_defined_is_asked_to_be_undefined():
    host = make_host()
    vm = destroyed_vm(host)
    vm.expunge_requested()
    vm.expunged()
    fakes = Fakes(vm, host)
    decide(fakes, "shutoff", GRACE_S + 1)
    [(command, _)] = fakes.sent
    assert "found shutoff" in command.reason and "undefine" in command.reason
    fakes.sent.clear()
    decide(fakes, "absent", GRACE_S + 1)  # gone: nothing to ask
    assert fakes.sent == []


def test_nothing_is_asked_while_the_host_is_not_up():
    host = make_host()
    fakes = Fakes(destroyed_vm(host), host)
    host.suspect("libvirt unreachable")
    decide(fakes, "running", GRACE_S + 1)
    assert fakes.sent == []


def test_a_recovered_vm_s_running_domain_is_not_stopped():
    # Recovered: Stopped again, and a Stopped VM's running domain is
    # recorded Running (the other rule), never stopped.
    host = make_host()
    vm = destroyed_vm(host)
    vm.recover()
    fakes = Fakes(vm, host)
    decide(fakes, "running", GRACE_S + 1)
    assert [type(c).__name__ for c, _ in fakes.sent] == ["ConvergeVm"]


def test_the_request_is_an_event_that_leaves_the_state_and_round_trips():
    host = make_host()
    vm = destroyed_vm(host)
    vm.request_domain_stop("its domain was found running")
    events = vm.collect_events()
    assert type(events[-1]).__name__ == "DomainStopRequested"
    again = replayed(events, MsgspecMapper())
    assert (again.state, again.last_error, again.last_host_id) == (
        "Destroyed",
        "its domain was found running",
        host.id,
    )


@pytest.mark.parametrize("state", ["Running", "Stopped"])
def test_a_vm_whose_domain_should_exist_is_refused(state):
    host = make_host()
    vm = VirtualMachine.create(
        "acme", "web", uuid4(), uuid4(), VmSpec(cpus=1, ram_mb=128, root_disk_gb=1)
    )
    vm.place(host.id, uuid4())
    vm.start_requested(host.id)
    vm.mark_running()
    if state == "Stopped":
        vm.stop_requested()
        vm.mark_stopped()
    assert_refused(vm, InvalidTransition, lambda: vm.request_domain_stop("found running"))


def test_the_command_is_refused_once_the_vm_moved_on_or_is_held():
    host = make_host()
    vm = destroyed_vm(host)
    vm.collect_events()
    uow = InMemoryUnitOfWork()
    uow.add(vm)
    late = RequestVmDomainStop(vm_id=vm.id, reason="found running", expected_version=vm.version - 1)
    assert_command_refused(uow, Conflict, late)
    # An operation holds it (here: an expunge just asked): its own work decides.
    op = uuid4()
    acquire(uow, vm.id, op, "vm.expunge")
    uow.commit()
    held = RequestVmDomainStop(vm_id=vm.id, reason="found running", expected_version=vm.version)
    assert "held by operation" in str(assert_command_refused(uow, Conflict, held))
    release(uow, vm.id, op)
    dispatch(uow, held)
    assert vm.last_error == "found running"


def test_event_times_are_aware():
    # The converger subtracts them from an aware clock.
    host = make_host()
    assert destroyed_vm(host).collect_events()[-1].timestamp.tzinfo is not None
