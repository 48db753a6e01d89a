"""Operations driven by hand on an in-memory unit of work: each step's
effects, the guard, idempotent advancing, and compensation after failure."""

from uuid import UUID

import pytest

from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    FailOperation,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from tests.unit.operation_world import GIB, World


def volumes(world: World, op_id: UUID) -> list[Volume]:
    return [world.get(Volume, v) for v in world.get(Operation, op_id).params.volume_ids]


def test_deploy_steps_reserve_provision_and_start(world: World) -> None:
    op_id, vm_id = world.deploy()
    op = world.get(Operation, op_id)
    assert (op.kind, op.status, op.current_step) == ("vm.deploy", "pending", "place")
    assert [v.state for v in volumes(world, op_id)] == ["Allocated", "Allocated"]
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id == op_id

    world.run(PlaceOperation(operation_id=op_id, host_id=world.host, pool_ids=(world.pool,) * 2))
    host = world.get(Host, world.host)
    assert host.reservations[vm_id].cpus == 2
    pool = world.get(StoragePool, world.pool)
    assert sorted(pool.reservations.values()) == [5 * GIB, 10 * GIB]
    assert [v.state for v in volumes(world, op_id)] == ["Creating", "Creating"]
    assert {v.host_id for v in volumes(world, op_id)} == {world.host}
    overlay = world.get(Network, world.overlay)
    assert overlay.state == "Implemented" and overlay.tag == 5000
    nics = [world.get(Nic, deploy_ids.nic_id(op_id, i)) for i in range(2)]
    assert [n.network_id for n in nics] == [world.flat, world.overlay]
    assert all(world.get(IpAddress, n.ip_id).state == "Associated" for n in nics)
    assert op.current_step == "provision" and op.status == "running"

    # Placing again (a redelivery, a second engine) changes nothing.
    before = len(world.uow.commit())
    world.run(PlaceOperation(operation_id=op_id, host_id=world.host, pool_ids=(world.pool,) * 2))
    world.run(AdvanceOperation(operation_id=op_id))  # volumes still Creating: waits
    assert world.uow.commit() == [] and before > 0

    for volume in volumes(world, op_id):
        volume.created()
    world.run(AdvanceOperation(operation_id=op_id))
    vm = world.get(VirtualMachine, vm_id)
    assert vm.state == "Starting" and vm.host_id == world.host
    assert [(v.state, v.device_id) for v in volumes(world, op_id)] == [
        ("Attached", 0),
        ("Attached", 1),
    ]
    world.run(AdvanceOperation(operation_id=op_id))
    assert op.current_step == "start"

    vm.mark_running()
    world.run(AdvanceOperation(operation_id=op_id))
    assert op.status == "succeeded" and op.finished_at is not None
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_a_second_operation_on_a_busy_vm_is_refused(world: World) -> None:
    op_id, vm_id = world.deploy()
    with pytest.raises(Conflict, match=f"operation {op_id} \\(vm.deploy\\) is still running"):
        world.run(VmOperation(kind="vm.stop", vm_id=vm_id))


def test_unplaceable_vm_fails_with_the_reason_and_holds_nothing(world: World) -> None:
    op_id, vm_id = world.deploy()
    world.run(FailOperation(operation_id=op_id, reason="no host fits: 1 host lacks cpu"))
    op = world.get(Operation, op_id)
    assert (op.status, op.error, op.failed_step) == (
        "failed",
        "no host fits: 1 host lacks cpu",
        "place",
    )
    vm = world.get(VirtualMachine, vm_id)
    assert vm.state == "Error" and vm.last_error == "no host fits: 1 host lacks cpu"
    assert [v.state for v in volumes(world, op_id)] == ["Destroyed", "Destroyed"]
    assert world.get(Host, world.host).reservations == {}
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_failed_volume_compensates_every_earlier_step(world: World) -> None:
    op_id, vm_id = world.deploy()
    world.run(PlaceOperation(operation_id=op_id, host_id=world.host, pool_ids=(world.pool,) * 2))
    root, data = volumes(world, op_id)
    root.created()
    data.fail("qemu-img: no space left on device")
    world.run(AdvanceOperation(operation_id=op_id))

    op = world.get(Operation, op_id)
    assert op.status == "compensating"
    assert "no space left" in (op.error or "")
    assert world.get(Host, world.host).reservations == {}
    assert world.get(StoragePool, world.pool).reservations == {}
    assert [v.state for v in volumes(world, op_id)] == ["Destroyed", "Destroyed"]
    for i in range(2):
        assert world.get(Nic, deploy_ids.nic_id(op_id, i)).state == "Released"
        assert world.get(IpAddress, deploy_ids.ip_id(op_id, i)).state == "Released"
    assert world.get(Network, world.flat).allocated == {}
    vm = world.get(VirtualMachine, vm_id)
    assert vm.state == "Expunging"  # the effector removes any domain

    world.run(AdvanceOperation(operation_id=op_id))  # waits for the effector
    assert op.status == "compensating"
    vm.expunged()
    world.run(AdvanceOperation(operation_id=op_id))
    assert op.status == "compensated"
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_failed_start_compensates_and_lifecycle_runs_after_success(world: World) -> None:
    op_id, vm_id = world.deploy(network_ids=(), data_disks_gb=())
    world.run(PlaceOperation(operation_id=op_id, host_id=world.host, pool_ids=(world.pool,)))
    volumes(world, op_id)[0].created()
    world.run(AdvanceOperation(operation_id=op_id))
    vm = world.get(VirtualMachine, vm_id)
    vm.mark_running()
    world.run(AdvanceOperation(operation_id=op_id))

    stop = world.run(VmOperation(kind="vm.stop", vm_id=vm_id))
    assert vm.state == "Stopping"
    vm.mark_stopped()
    world.run(AdvanceOperation(operation_id=stop))
    assert world.get(Operation, stop).status == "succeeded"
    assert world.get(Host, world.host).reservations == {}

    start = world.run(VmOperation(kind="vm.start", vm_id=vm_id))
    world.run(PlaceOperation(operation_id=start, host_id=world.host))
    assert vm.state == "Starting" and vm_id in world.get(Host, world.host).reservations
    vm.fail("internal error: qemu died")
    world.run(AdvanceOperation(operation_id=start))
    assert world.get(Operation, start).status == "compensated"
    assert world.get(Host, world.host).reservations == {}

    destroy = world.run(VmOperation(kind="vm.destroy", vm_id=vm_id))
    assert world.get(Operation, destroy).status == "succeeded" and vm.state == "Destroyed"
    recover = world.run(VmOperation(kind="vm.recover", vm_id=vm_id))
    assert world.get(Operation, recover).status == "succeeded" and vm.state == "Stopped"
    world.run(VmOperation(kind="vm.destroy", vm_id=vm_id))
    expunge = world.run(VmOperation(kind="vm.expunge", vm_id=vm_id))
    vm.expunged()
    world.run(AdvanceOperation(operation_id=expunge))
    assert world.get(Operation, expunge).status == "succeeded"
    assert volumes(world, op_id)[0].state == "Destroyed"
    assert world.get(StoragePool, world.pool).reservations == {}


def test_a_failure_about_a_step_the_operation_has_left_is_ignored(world: World) -> None:
    # Another engine instance placed the deploy while this one's placement
    # was refused: its FailOperation (about "place") must not undo the deploy.
    op_id, vm_id = world.deploy()
    world.run(PlaceOperation(operation_id=op_id, host_id=world.host, pool_ids=(world.pool,) * 2))
    op = world.get(Operation, op_id)
    assert op.current_step == "provision"

    world.run(FailOperation(operation_id=op_id, reason="refused", step="place"))

    assert (op.status, op.current_step, op.error) == ("running", "provision", None)
    assert vm_id in world.get(Host, world.host).reservations
    world.run(FailOperation(operation_id=op_id, reason="no answer", step="provision"))
    assert op.status == "compensating" and op.error == "no answer"
