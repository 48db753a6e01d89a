"""An expunge the hypervisor refuses, or never answers: the operation ends,
the VM goes back to Destroyed with the reason, and expunge can be asked
again. A deploy's compensation does not retry a refused expunge forever."""

from uuid import UUID

from cloud_engine.engine.commands.compute import FailVmExpunge
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    FailOperation,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from tests.unit.operation_world import World

REFUSED = "unsupported flags (0x14) in function testDomainUndefineFlags"


def destroyed_vm(world: World) -> tuple[UUID, UUID]:
    deploy_op, vm_id = world.running_vm()
    world.run(VmOperation(kind="vm.destroy", vm_id=vm_id))
    return deploy_op, vm_id


def held_by_deploy(world: World, deploy_op: UUID) -> tuple[str, str, list[str]]:
    nic = world.get(Nic, deploy_ids.nic_id(deploy_op, 0)).state
    ip = world.get(IpAddress, deploy_ids.ip_id(deploy_op, 0)).state
    op = world.get(Operation, deploy_op)
    return nic, ip, [world.get(Volume, v).state for v in op.params.volume_ids]


def test_refused_expunge_fails_the_operation_and_releases_nothing(world: World) -> None:
    deploy_op, vm_id = destroyed_vm(world)
    before = held_by_deploy(world, deploy_op)
    expunge = world.run(VmOperation(kind="vm.expunge", vm_id=vm_id))

    world.run(FailVmExpunge(vm_id=vm_id, reason=REFUSED))
    world.run(AdvanceOperation(operation_id=expunge))

    op = world.get(Operation, expunge)
    vm = world.get(VirtualMachine, vm_id)
    assert (op.status, op.error) == ("failed", REFUSED)
    assert (vm.state, vm.expunge_error, vm.last_error) == ("Destroyed", REFUSED, REFUSED)
    assert held_by_deploy(world, deploy_op) == before
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None

    again = world.run(VmOperation(kind="vm.expunge", vm_id=vm_id))
    assert vm.state == "Expunging" and vm.expunge_error is None
    vm.expunged()
    world.run(AdvanceOperation(operation_id=again))
    assert world.get(Operation, again).status == "succeeded"
    nic, ip, volumes = held_by_deploy(world, deploy_op)
    assert (nic, ip) == ("Released", "Released") and set(volumes) == {"Destroyed"}


def test_expunge_without_an_answer_times_out_back_to_destroyed(world: World) -> None:
    _, vm_id = destroyed_vm(world)
    expunge = world.run(VmOperation(kind="vm.expunge", vm_id=vm_id))

    world.run(FailOperation(operation_id=expunge, reason="no answer in 600 s", timed_out=True))

    vm = world.get(VirtualMachine, vm_id)
    assert world.get(Operation, expunge).status == "failed"
    assert (vm.state, vm.expunge_error) == ("Destroyed", "no answer in 600 s")
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None
    world.run(VmOperation(kind="vm.recover", vm_id=vm_id))
    assert vm.state == "Stopped"


def test_deploy_compensation_stops_at_a_refused_expunge(world: World) -> None:
    op_id, vm_id = world.deploy()
    world.run(PlaceOperation(operation_id=op_id, host_id=world.host, pool_ids=(world.pool,) * 2))
    for volume_id in world.get(Operation, op_id).params.volume_ids:
        world.get(Volume, volume_id).created()
    world.run(AdvanceOperation(operation_id=op_id))
    vm = world.get(VirtualMachine, vm_id)
    vm.fail("internal error: qemu died")
    world.run(AdvanceOperation(operation_id=op_id))
    assert vm.state == "Expunging"  # compensation asks the effector to remove the domain

    world.run(FailVmExpunge(vm_id=vm_id, reason=REFUSED))
    world.run(AdvanceOperation(operation_id=op_id))

    op = world.get(Operation, op_id)
    assert op.status == "compensated"
    assert (vm.state, vm.expunge_error) == ("Destroyed", REFUSED)
    assert world.get(Host, world.host).reservations == {}
    assert world.get(StoragePool, world.pool).reservations == {}
    nic, ip, volumes = held_by_deploy(world, op_id)
    assert (nic, ip) == ("Released", "Released") and set(volumes) == {"Destroyed"}
    assert world.get(ResourceGuard, guard_id(vm_id)).operation_id is None
