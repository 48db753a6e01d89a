"""A migrate work item of a VM whose migration step timed out in the engine
(unsettled between its two hosts): the effector only tells where the guest
runs. A host it cannot ask, or a guest on both, is no answer: a failure
would record the VM on its source wherever its guest runs, so the item is
retried (NotSettled) instead. Behind fakes: settle() is what the lab tests
check on real libvirtds."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from cloud_engine.effectors.compute.driver import ComputeDriver
from cloud_engine.effectors.compute.migration import RunsTwice
from cloud_engine.effectors.compute.spec import DomainState
from cloud_engine.effectors.desired import HostView, VmSize, VmView
from cloud_engine.effectors.handlers import vm_migrate
from cloud_engine.effectors.handlers.vm_plan import VmPlan
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import Unsupported


def host(name: str) -> HostView:
    return HostView(
        id=uuid.uuid4(),
        version=1,
        name=name,
        zone_id=uuid.uuid4(),
        state="Enabled",
        libvirt_uri=f"qemu+tcp://{name}/system",
    )


def plan(state: str) -> VmPlan:
    source, target = host("h1"), host("h2")
    vm = VmView(
        id=uuid.uuid4(),
        version=9,
        name="web",
        zone_id=source.zone_id,
        state=state,
        spec=VmSize(cpus=1, ram_mb=64, root_disk_gb=1),
        host_id=None,
        last_host_id=source.id,
        migration_target_id=target.id,
        unsettled=True,
    )
    return VmPlan(vm=vm, host=source, destination=target)


class Executor:
    def hypervisor(self, uri: str) -> Any:
        return uri

    def fault(self, _point: str) -> None:
        """No faults injected here."""


def settling_with(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> None:
    def settle(*_args: Any, **_kw: Any) -> str:
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)

    monkeypatch.setattr(vm_migrate, "settle", settle)


@pytest.mark.parametrize(
    "error",
    [
        HypervisorError("qemu+tcp://h2/system", "lookup", 38, "no route to host"),
        RunsTwice(uuid.uuid4(), "qemu+tcp://h1/system", "qemu+tcp://h2/system"),
    ],
)
def test_a_host_it_cannot_ask_is_asked_again_not_failed(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    settling_with(monkeypatch, error)
    with pytest.raises(vm_migrate.NotSettled, match="cannot be told yet"):
        vm_migrate.migrate(Executor(), None, plan("Error"))  # type: ignore[arg-type]


def test_a_guest_that_stayed_on_the_source_is_not_migrated_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settling_with(monkeypatch, "source")
    monkeypatch.setattr(vm_migrate, "live_migrate", pytest.fail)
    realised = realising(monkeypatch)
    with pytest.raises(Unsupported, match="stayed on host"):
        vm_migrate.migrate(Executor(), None, plan("Error"))  # type: ignore[arg-type]
    # Its source's DHCP forgot it when the migration began: it knows it again.
    assert realised == ["h1"]


def realising(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """vm_network.realise behind a fake: the names of the hosts whose
    networks (and DHCP) were made to know the guest."""
    realised: list[str] = []
    monkeypatch.setattr(
        vm_migrate.vm_network, "realise", lambda _e, p, **_kw: realised.append(p.host.name)
    )
    return realised


def observing(monkeypatch: pytest.MonkeyPatch, running: str) -> list[str]:
    """ComputeDriver.observe behind a fake: the guest runs on the host whose
    URI names `running`; any other host's libvirtd does not answer. Returns
    the URIs asked."""
    asked: list[str] = []

    def observe(self: ComputeDriver, vm_id: uuid.UUID) -> DomainState:
        uri = str(self.hypervisor)
        asked.append(uri)
        if running not in uri:
            raise HypervisorError(uri, "lookup", 38, "no route to host")
        return DomainState(uuid=vm_id, exists=True, state="running")

    monkeypatch.setattr(ComputeDriver, "observe", observe)
    return asked


def fenced(host: HostView) -> HostView:
    return msgspec.structs.replace(host, liveness="Down", fenced=True)


def test_a_fenced_destination_runs_nothing_and_is_not_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its power was cut: whether it ever answers again, the guest runs on
    # the source or nowhere.
    asked = observing(monkeypatch, "h1")
    unsettled = plan("Error")
    assert unsettled.destination is not None
    unsettled = msgspec.structs.replace(unsettled, destination=fenced(unsettled.destination))
    realised = realising(monkeypatch)
    with pytest.raises(Unsupported, match="stayed on host"):
        vm_migrate.migrate(Executor(), None, unsettled)  # type: ignore[arg-type]
    assert asked and all("h1" in uri for uri in asked)
    assert realised == ["h1"]


def test_a_fenced_source_runs_nothing_and_is_not_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = observing(monkeypatch, "h2")
    unsettled = plan("Error")
    assert unsettled.destination is not None
    unsettled = msgspec.structs.replace(unsettled, host=fenced(unsettled.host))
    where = vm_migrate._where_it_runs(Executor(), unsettled, unsettled.destination)  # type: ignore[arg-type]
    assert where == "destination"
    assert asked and all("h2" in uri for uri in asked)


def test_a_host_down_but_not_fenced_is_still_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Down without a fence is no proof its guests are gone: no answer yet.
    observing(monkeypatch, "h1")
    unsettled = plan("Error")
    assert unsettled.destination is not None
    down = msgspec.structs.replace(unsettled.destination, liveness="Down")
    unsettled = msgspec.structs.replace(unsettled, destination=down)
    with pytest.raises(vm_migrate.NotSettled, match="cannot be told yet"):
        vm_migrate.migrate(Executor(), None, unsettled)  # type: ignore[arg-type]


def test_a_fenced_source_and_a_destination_without_the_guest_is_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The guest runs nowhere: the failure records the VM Running on its
    # fenced source, where HA records it Stopped (tests/integration/
    # test_ha_late.py), rather than holding it unsettled until the source
    # is back, which may be never.
    def observe(self: ComputeDriver, vm_id: uuid.UUID) -> DomainState:
        return DomainState(uuid=vm_id, exists=False, state="absent")

    monkeypatch.setattr(ComputeDriver, "observe", observe)
    unsettled = plan("Error")
    unsettled = msgspec.structs.replace(unsettled, host=fenced(unsettled.host))
    with pytest.raises(Unsupported, match=r"source .* is fenced: it runs nowhere"):
        vm_migrate.migrate(Executor(), None, unsettled)  # type: ignore[arg-type]


# A VM still Migrating (its step's deadline not passed) --------------------------


def test_on_time_a_fenced_source_counts_as_off_and_the_destination_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Switch-over done, the effector killed before answering, the source's
    # host dead and fenced: the guest runs on the destination, so the answer
    # is success, not a failure that would free the destination.
    asked = observing(monkeypatch, "h2")
    realised = realising(monkeypatch)
    migrating = plan("Migrating")
    assert migrating.destination is not None
    migrating = msgspec.structs.replace(migrating, host=fenced(migrating.host))
    state = vm_migrate.migrate(Executor(), None, migrating)  # type: ignore[arg-type]
    assert state == "running"
    assert asked and all("h2" in uri for uri in asked)
    # The destination's networks made; the fenced source not asked to forget.
    assert realised == ["h2"]


def test_on_time_a_silent_source_and_a_destination_running_it_is_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    observing(monkeypatch, "h2")  # h1, the source, does not answer
    migrating = plan("Migrating")
    assert migrating.destination is not None
    with pytest.raises(vm_migrate.NotSettled, match="cannot be told yet"):
        vm_migrate.migrate(Executor(), None, migrating)  # type: ignore[arg-type]


def test_on_time_a_silent_source_and_a_destination_without_it_is_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The record stays on the source, where the guest runs or, the source
    # dead, where liveness and HA find it.
    def observe(self: ComputeDriver, vm_id: uuid.UUID) -> DomainState:
        uri = str(self.hypervisor)
        if "h1" in uri:
            raise HypervisorError(uri, "lookup", 38, "no route to host")
        return DomainState(uuid=vm_id, exists=False, state="absent")

    monkeypatch.setattr(ComputeDriver, "observe", observe)
    with pytest.raises(HypervisorError, match="no route to host"):
        vm_migrate.migrate(Executor(), None, plan("Migrating"))  # type: ignore[arg-type]


def test_a_migration_error_with_the_guest_on_the_destination_is_a_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libvirt's error came after the switch-over (or a host stopped answering
    # while live_migrate looked): the hosts, observed again, decide.
    answers = iter(["source", "destination"])
    monkeypatch.setattr(vm_migrate, "settle", lambda *_a, **_kw: next(answers))

    def fails(*_args: Any, **_kw: Any) -> None:
        raise HypervisorError("qemu+tcp://h1/system", "migrate", 1, "connection reset")

    monkeypatch.setattr(vm_migrate, "live_migrate", fails)
    monkeypatch.setattr(vm_migrate.vm_network, "realise", lambda *_a, **_kw: None)
    monkeypatch.setattr(vm_migrate.vm_network, "forget", lambda *_a, **_kw: None)
    running = lambda _s, vm_id: DomainState(uuid=vm_id, exists=True, state="running")  # noqa: E731
    monkeypatch.setattr(ComputeDriver, "observe", running)
    assert vm_migrate.migrate(Executor(), None, plan("Migrating")) == "running"  # type: ignore[arg-type]


def test_on_time_a_silent_destination_is_a_failure_not_a_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A consumer retries a NotSettled item in place, holding the zone's other
    # work: a destination that does not answer is the failure, as before.
    observing(monkeypatch, "h1")  # h2, the destination, does not answer
    with pytest.raises(HypervisorError, match="no route to host"):
        vm_migrate._where_it_runs_now(Executor(), plan("Migrating"), plan("Migrating").destination)  # type: ignore[arg-type]


def test_a_failure_whose_hosts_cannot_be_told_gives_the_source_its_dhcp_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # live_migrate fails, then the source stops answering and the destination
    # has no such domain: the failure stands, and the source's DHCP, which
    # forgot the guest as the migration began, is told of it again.
    answers: list[Any] = ["source", HypervisorError("qemu+tcp://h1/system", "lookup", 38, "gone")]

    def settle(*_a: Any, **_kw: Any) -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    def fails(*_args: Any, **_kw: Any) -> None:
        raise HypervisorError("qemu+tcp://h1/system", "migrate", 1, "connection reset")

    monkeypatch.setattr(vm_migrate, "settle", settle)
    monkeypatch.setattr(vm_migrate, "live_migrate", fails)
    monkeypatch.setattr(vm_migrate.vm_network, "forget", lambda *_a, **_kw: None)
    absent = lambda _s, vm_id: DomainState(uuid=vm_id, exists=False, state="absent")  # noqa: E731
    monkeypatch.setattr(ComputeDriver, "observe", absent)
    realised = realising(monkeypatch)
    with pytest.raises(HypervisorError, match="gone"):
        vm_migrate.migrate(Executor(), None, plan("Migrating"))  # type: ignore[arg-type]
    assert realised == ["h2", "h1"]  # the destination's networks first (no DHCP), then the source
