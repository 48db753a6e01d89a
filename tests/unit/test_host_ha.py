"""host.ha driven by hand on an in-memory unit of work: the run begins only
on a Down, fenced host, records, restarts each listed VM once under an id
derived from the run, and ends when every restart has ended."""

import pytest

from cloud_engine.engine.commands.ha import BeginHaRun, ReportHaRun, RestartOnHa
from cloud_engine.engine.commands.liveness import ConvergeVm
from cloud_engine.engine.commands.maintenance import HostOperation
from cloud_engine.engine.commands.operations import FailOperation
from cloud_engine.engine.errors import Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.host_ha import restart_id, run_id
from cloud_engine.engine.operations.operation import Operation
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
