"""host.ha driven by hand on an in-memory unit of work: the run begins only
on a Down, fenced host, records, restarts each listed VM once under an id
derived from the run, and ends when every restart has ended; a VM back on
the fenced host afterwards (RecoverLateOnHa) is recorded Stopped and
restarted once."""

from uuid import UUID

import msgspec
import pytest

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.commands.compute import FailVmMigration
from cloud_engine.engine.commands.ha import BeginHaRun, RecoverLateOnHa, ReportHaRun, RestartOnHa
from cloud_engine.engine.commands.liveness import ConvergeVm
from cloud_engine.engine.commands.maintenance import HostOperation
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    FailOperation,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.errors import Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.host_ha import late_restart_id, restart_id, run_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.vm import VirtualMachine
from tests.unit.operation_world import World


def _fence(world: World) -> Host:
    host = world.get(Host, world.host)
    host.suspect("libvirt unreachable")
    host.confirm_down("no heartbeat", None)
    host.record_fenced("lab-power")
    return host


def test_a_run_needs_a_fenced_host_then_records_and_restarts_once(world: World):
    _, ha_vm = world.running_vm(network_ids=(), data_disks_gb=())
    _, plain = world.running_vm(network_ids=(), data_disks_gb=())
    ha_id = run_id(world.host, "t0")
    with pytest.raises(InvalidTransition, match="Down and fenced"):
        world.run(BeginHaRun(host_id=world.host, operation_id=ha_id, vm_ids=(ha_vm,)))
    _fence(world)
    world.run(BeginHaRun(host_id=world.host, operation_id=ha_id, vm_ids=(ha_vm,)))
    run = world.get(Operation, ha_id)
    assert (run.kind, run.current_step, run.params.vm_ids) == ("host.ha", "record", (ha_vm,))
    assert world.get(ResourceGuard, guard_id(world.host)).operation_id == ha_id
    with pytest.raises(Conflict, match="at record"):
        world.run(RestartOnHa(operation_id=ha_id, vm_id=ha_vm))

    for vm in (ha_vm, plain):
        world.run(ConvergeVm(vm_id=vm, to="Stopped", reason="host down and fenced"))
    world.run(ReportHaRun(operation_id=ha_id, stage="recorded"))
    assert run.current_step == "restart"
    with pytest.raises(Validation, match="not one HA run"):
        world.run(RestartOnHa(operation_id=ha_id, vm_id=plain))
    start = world.run(RestartOnHa(operation_id=ha_id, vm_id=ha_vm))
    assert start == restart_id(ha_id, ha_vm)
    assert world.run(RestartOnHa(operation_id=ha_id, vm_id=ha_vm)) == start  # asked once
    assert world.get(Operation, start).kind == "vm.start"

    world.run(ReportHaRun(operation_id=ha_id, stage="restarting", remaining=1))
    assert run.status == "running"
    world.run(ReportHaRun(operation_id=ha_id, stage="restarting", remaining=0))
    assert run.status == "succeeded"
    assert [s.status for s in run.steps] == ["done", "done", "done"]
    assert world.get(ResourceGuard, guard_id(world.host)).operation_id is None


def test_a_run_with_a_vm_not_restarted_fails_naming_it(world: World):
    _, vm = world.running_vm(network_ids=(), data_disks_gb=())
    _fence(world)
    ha_id = run_id(world.host, "t1")
    world.run(BeginHaRun(host_id=world.host, operation_id=ha_id, vm_ids=(vm,)))
    world.run(ReportHaRun(operation_id=ha_id, stage="recorded"))
    world.run(
        ReportHaRun(operation_id=ha_id, stage="restarting", failed=(f"vm {vm}: no host fits",))
    )
    run = world.get(Operation, ha_id)
    assert run.status == "failed" and f"vm {vm}: no host fits" in (run.error or "")
    assert world.get(ResourceGuard, guard_id(world.host)).operation_id is None


def test_a_drain_of_a_host_that_dies_ends_and_ha_takes_over(world: World):
    world.running_vm(network_ids=(), data_disks_gb=())
    drain = world.run(HostOperation(kind="host.maintenance", host_id=world.host))
    _fence(world)
    ha_id = run_id(world.host, "t2")
    world.run(BeginHaRun(host_id=world.host, operation_id=ha_id))
    assert world.get(Operation, drain).status == "failed"
    assert "HA took over" in (world.get(Operation, drain).error or "")
    assert world.get(ResourceGuard, guard_id(world.host)).operation_id == ha_id
    world.run(FailOperation(operation_id=ha_id, reason="cancelled in a test"))
    assert world.get(Operation, ha_id).status == "failed"


def _migrating_off(world: World, *, ha: bool) -> tuple[UUID, UUID, UUID]:
    """A VM live-migrating from world.host to a second host: (vm, its
    vm.migrate operation, the second host)."""
    _, vm = world.running_vm(network_ids=(), data_disks_gb=(), ha=ha)
    other = world.add_host(f"h-{vm}")
    migrate = world.run(VmOperation(kind="vm.migrate", vm_id=vm, host_id=other))
    world.run(PlaceOperation(operation_id=migrate, host_id=other))
    assert world.get(VirtualMachine, vm).state == "Migrating"
    return vm, migrate, other


def _ended_run(world: World, fence: str) -> UUID:
    """The host fenced and its HA run begun and ended with nothing to restart."""
    _fence(world)
    ha_id = run_id(world.host, fence)
    world.run(BeginHaRun(host_id=world.host, operation_id=ha_id))
    world.run(ReportHaRun(operation_id=ha_id, stage="recorded"))
    world.run(ReportHaRun(operation_id=ha_id, stage="restarting"))
    assert world.get(Operation, ha_id).status == "succeeded"
    return ha_id


def test_a_vm_back_on_the_fenced_host_after_the_run_is_stopped_and_restarted_once(world: World):
    vm_id, migrate, other = _migrating_off(world, ha=True)
    ha_id = _ended_run(world, "t3")
    late = RecoverLateOnHa(operation_id=ha_id, vm_id=vm_id, reason="host down and fenced")
    with pytest.raises(Conflict, match="is Migrating"):
        world.run(late)
    # The migration's failure answered late: back on its (fenced) source.
    world.run(FailVmMigration(vm_id=vm_id, reason="migration failed: connection reset"))
    vm = world.get(VirtualMachine, vm_id)
    assert (vm.state, vm.host_id) == ("Running", world.host)
    with pytest.raises(Conflict, match="held by operation"):
        world.run(late)  # the migration's own answer is still to be settled
    world.run(AdvanceOperation(operation_id=migrate))
    assert world.get(Operation, migrate).status == "failed"
    assert vm_id not in world.get(Host, other).reservations
    assert vm_id in world.get(Host, world.host).reservations

    found_at = vm.version
    outcome = dispatch(world.uow, msgspec.structs.replace(late, expected_version=found_at))
    start = late_restart_id(ha_id, vm_id, found_at)
    assert (outcome.aggregate_id, outcome.value) == (vm_id, str(start))
    assert (vm.state, vm.converged_reason, vm.last_host_id) == (
        "Stopped",
        "host down and fenced",
        world.host,
    )
    assert vm_id not in world.get(Host, world.host).reservations
    op = world.get(Operation, start)
    assert (op.kind, op.resource_id, op.status) == ("vm.start", vm_id, "pending")
    with pytest.raises(Conflict, match="is Stopped"):
        world.run(late)  # asked again: nothing Running there, no second start


def test_a_late_vm_is_the_runs_only_if_listed_and_needs_the_fence(world: World):
    plain, migrate, _ = _migrating_off(world, ha=False)
    world.run(FailVmMigration(vm_id=plain, reason="migration failed"))
    world.run(AdvanceOperation(operation_id=migrate))
    _, listed = world.running_vm(network_ids=(), data_disks_gb=(), ha=True)
    _, other = world.running_vm(network_ids=(), data_disks_gb=())
    host = _fence(world)
    ha_id = run_id(world.host, "t4")
    world.run(BeginHaRun(host_id=world.host, operation_id=ha_id, vm_ids=(listed,)))
    with pytest.raises(Validation, match="restarts itself"):
        world.run(RecoverLateOnHa(operation_id=ha_id, vm_id=listed, reason="r"))
    # Not HA-enabled: recorded Stopped, nothing started.
    outcome = dispatch(world.uow, RecoverLateOnHa(operation_id=ha_id, vm_id=plain, reason="r"))
    assert (outcome.aggregate_id, outcome.value) == (plain, None)
    assert world.get(VirtualMachine, plain).state == "Stopped"
    assert plain not in host.reservations
    # Once the host is Up again, what runs there is its own.
    host.declare_alive("declared up by an administrator")
    with pytest.raises(Conflict, match="is Up"):
        world.run(RecoverLateOnHa(operation_id=ha_id, vm_id=other, reason="r"))
