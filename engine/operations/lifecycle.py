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
                the deploy made destroyed, NICs and IPs released, volumes
                attached later detached (they outlive the VM); if the
                domain cannot be removed, or no answer comes in time, the
                VM goes back to Destroyed with the reason, nothing released
    vm.migrate  place (the planner, or the caller's host, never the current
                one; capacity reserved there) -> migrate (the effector moves
                the domain; the source's capacity released, or on failure
                the target's)
"""

from __future__ import annotations

from uuid import UUID

from engine.errors import Conflict, Validation
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
    "vm.migrate": ("place", "migrate"),
}
PLACED = ("vm.start", "vm.migrate")
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
    elif kind == "vm.migrate":
        vm.require_state(["Running"], "migrate")
        if op.params.host_id is not None and op.params.host_id == vm.host_id:
            raise Validation(f"vm {vm.id} already runs on host {vm.host_id}", field="host_id")


def place(uow: UnitOfWork, op: Operation, host_id: UUID) -> bool:
    """The place step of a start or a migration with the planner's host."""
    if (
        op.kind not in PLACED
        or op.current_step != "place"
        or op.status
        not in (
            "pending",
            "running",
        )
    ):
        return False
    vm = uow.get(VirtualMachine, op.resource_id)
    host = uow.get(Host, host_id)
    host.require_state(["Enabled"], "place a VM on")
    if op.kind == "vm.migrate":
        vm.require_state(["Running"], "migrate")
        if op.params.source_host_id != vm.host_id:
            raise Conflict(f"vm {vm.id} left host {op.params.source_host_id}", field="vm_id")
        vm.migrate_requested(host_id)  # refuses the current host
    host.reserve(vm.id, vm.spec.cpus, vm.spec.ram_mb)
    if vm.affinity_group is not None:
        group = uow.find(affinity.AffinityGroup, affinity.group_id(vm.account, vm.affinity_group))
        if group is not None:
            group.admit(vm.id, host_id)
    if op.kind == "vm.start":
        vm.start_requested(host_id)
    op.choose_host(host_id)
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
    elif kind == "vm.expunge":
        if vm.state == "Expunged":
            release_resources(uow, op, vm)
            _done(uow, op, "expunge")
        elif vm.state == "Destroyed":
            # The effector could not remove the domain: nothing was released,
            # the VM can be expunged again.
            _failed(uow, op, vm.expunge_error or "the domain could not be removed")
    elif kind == "vm.migrate" and step == "migrate":
        _advance_migration(uow, op, vm)


def _advance_migration(uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
    if vm.state == "Migrating":
        return
    source, target = op.params.source_host_id, op.chosen_host_id
    if vm.host_id == target and target is not None:
        deploy.release_on(uow, source, vm)
        _done(uow, op, "migrate")
        return
    # It failed (still on the source) or the VM left Running meanwhile: the
    # target's reservation goes back, the group sees it where it is.
    deploy.release_on(uow, target, vm)
    if vm.affinity_group is not None and vm.host_id is not None:
        group = uow.find(affinity.AffinityGroup, affinity.group_id(vm.account, vm.affinity_group))
        if group is not None:
            group.restore(vm.id, vm.host_id)
    _failed(uow, op, vm.last_error or f"vm {vm.id} is {vm.state}, not migrated")


def fail(uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool = False) -> None:
    """Fail the operation from outside: no host fits, or a step got no answer
    in time. In the latter case the VM's pending change is failed too (a
    late effector result is then refused and the reconciler reports any
    drift); only a placed start or migration holds something to give back."""
    if op.status not in ("pending", "running"):
        return
    vm = uow.get(VirtualMachine, op.resource_id)
    if timed_out and vm.state in ("Starting", "Stopping"):
        vm.fail(reason)
    if timed_out and vm.state == "Expunging":
        vm.expunge_failed(reason)
    if op.kind == "vm.migrate" and op.done("place"):
        if timed_out and vm.state == "Migrating":
            vm.migration_failed(reason)
        _advance_migration(uow, op, vm)
    elif op.kind == "vm.start" and op.done("place"):
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
        deploy.release_volume(uow, volume, vm)
    for volume_id in list(vm.disks.values()):
        volume = uow.find(Volume, volume_id)
        if volume is not None and volume.vm_id == vm.id:
            volume.detach(vm_expunging=True)
        vm.disk_detached(volume_id)


def _done(uow: UnitOfWork, op: Operation, step: str) -> None:
    op.complete_step(step)
    if op.finished:
        guard.release(uow, op.resource_id, op.id)


def _failed(uow: UnitOfWork, op: Operation, reason: str) -> None:
    op.fail(reason, compensate=False)
    guard.release(uow, op.resource_id, op.id)
