"""The VM lifecycle after deploy: start, stop, reboot, destroy, recover,
expunge. Each is an Operation with the VM's guard held while it runs.

    vm.start    place (the engine's planner, the last host preferred) ->
                start (Running); a failed start releases the capacity
    vm.stop     stop (Stopped; its host capacity released)
    vm.reboot   reboot (the effector's reboot recorded)
    vm.destroy  done at once: Destroyed, capacity released (the effector
                stops the domain); recoverable until expunged
    vm.recover  done at once: Destroyed -> Stopped
    vm.expunge  expunge (the effector undefines the domain) -> the volumes
                the deploy made destroyed, NICs and IPs released
"""

from __future__ import annotations

from uuid import UUID

from engine.fabric.host import Host
from engine.operations import affinity, deploy, guard
from engine.operations.operation import Operation
from engine.unit_of_work import UnitOfWork
from engine.virtual.vm import VirtualMachine
from engine.virtual.volume import Volume

STEPS: dict[str, tuple[str, ...]] = {
    "vm.start": ("place", "start"),
    "vm.stop": ("stop",),
    "vm.reboot": ("reboot",),
    "vm.destroy": ("destroy",),
    "vm.recover": ("recover",),
    "vm.expunge": ("expunge",),
}
# At most this many volumes are looked for under a deploy's derived ids.
MAX_VOLUMES = 32


def begin(uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
    """The first action of a lifecycle operation, in its creating transaction
    (so a refused one records nothing)."""
    kind = op.kind
    if kind == "vm.start":
        vm.require_state(["Stopped"], "start")
    elif kind == "vm.stop":
        vm.stop_requested(op.params.forced)
    elif kind == "vm.reboot":
        vm.reboot()
    elif kind == "vm.destroy":
        vm.destroy()
        deploy.release_host(uow, vm)
        _done(uow, op, "destroy")
    elif kind == "vm.recover":
        vm.recover()
        _done(uow, op, "recover")
    elif kind == "vm.expunge":
        vm.expunge_requested()


def place_start(uow: UnitOfWork, op: Operation, host_id: UUID) -> bool:
    if op.kind != "vm.start" or op.current_step != "place" or op.finished:
        return False
    vm = uow.get(VirtualMachine, op.resource_id)
    host = uow.get(Host, host_id)
    host.require_state(["Enabled"], "start a VM on")
    host.reserve(vm.id, vm.spec.cpus, vm.spec.ram_mb)
    if vm.affinity_group is not None:
        group = uow.find(affinity.AffinityGroup, affinity.group_id(vm.account, vm.affinity_group))
        if group is not None:
            group.admit(vm.id, host_id)
    vm.start_requested(host_id)
    op.complete_step("place")
    return True


def advance(uow: UnitOfWork, op: Operation) -> None:
    if op.finished:
        return
    vm = uow.get(VirtualMachine, op.resource_id)
    kind, step = op.kind, op.current_step
    if op.status == "compensating":
        # Only a failed start holds something: the capacity it reserved.
        deploy.release_host(uow, vm)
        op.compensated()
        guard.release(uow, vm.id, op.id)
    elif kind == "vm.start" and step == "start":
        if vm.state == "Running":
            _done(uow, op, "start")
        elif vm.state == "Error":
            op.fail(vm.last_error or "the VM failed to start", compensate=True)
            advance(uow, op)
    elif kind == "vm.stop":
        if vm.state == "Stopped":
            deploy.release_host(uow, vm)
            _done(uow, op, "stop")
        elif vm.state == "Error":
            _failed(uow, op, vm.last_error or "the VM failed to stop")
    elif kind == "vm.reboot":
        if vm.reboot_pending:
            return
        if vm.reboot_error is not None:
            _failed(uow, op, vm.reboot_error)
        else:
            _done(uow, op, "reboot")
    elif kind == "vm.expunge" and vm.state == "Expunged":
        release_resources(uow, op, vm)
        _done(uow, op, "expunge")


def fail(uow: UnitOfWork, op: Operation, reason: str) -> None:
    """Fail the operation from outside (no host fits a start); only a placed
    start holds something to compensate."""
    if op.finished:
        return
    if op.kind == "vm.start" and op.done("place"):
        op.fail(reason, compensate=True)
        advance(uow, op)
    else:
        _failed(uow, op, reason)


def release_resources(uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
    """What the VM's deploy made: its volumes destroyed, NICs and IPs released."""
    deploy_op = deploy.operation_id(vm.id)
    deploy.release_host(uow, vm)
    affinity.leave(uow, vm.account, vm.affinity_group, vm.id)
    deploy.release_network(uow, deploy_op, vm)
    for index in range(MAX_VOLUMES):
        volume = uow.find(Volume, deploy.volume_id(deploy_op, index))
        if volume is None:
            break
        deploy.release_volume(uow, volume, vm.id)


def _done(uow: UnitOfWork, op: Operation, step: str) -> None:
    op.complete_step(step)
    if op.finished:
        guard.release(uow, op.resource_id, op.id)


def _failed(uow: UnitOfWork, op: Operation, reason: str) -> None:
    op.fail(reason, compensate=False)
    guard.release(uow, op.resource_id, op.id)
