"""The operation manager's step deadline: which operations it cuts short."""

import time

from cloud_engine.engine.commands.operations import PlaceOperation, VmOperation
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.orchestration.manager import OperationManager
from tests.unit.operation_world import World


def manager(deadline_s: float) -> OperationManager:
    # The deadline check reads only the operation: nothing else is needed.
    return OperationManager(None, None, None, None, step_deadline_s=deadline_s)  # type: ignore[arg-type]


def test_only_steps_waiting_on_effectors_past_the_deadline_are_overdue(world: World):
    op_id, _ = world.deploy()
    op = world.get(Operation, op_id)
    time.sleep(0.02)
    assert not manager(0.01)._overdue(op)  # placing is the engine's own work
    pools = (world.pool,) * len(op.params.volume_ids)
    world.run(PlaceOperation(operation_id=op_id, host_id=world.host, pool_ids=pools))
    assert not manager(0.01)._overdue(op)  # the step just began
    time.sleep(0.02)
    assert manager(0.01)._overdue(op)
    assert not manager(60)._overdue(op)

    _, vm_id = world.running_vm(name="db", network_ids=(), data_disks_gb=())
    world.run(VmOperation(kind="vm.destroy", vm_id=vm_id))
    expunge = world.get(Operation, world.run(VmOperation(kind="vm.expunge", vm_id=vm_id)))
    time.sleep(0.02)
    assert manager(0.01)._overdue(expunge)  # a silent effector must not hold it forever
