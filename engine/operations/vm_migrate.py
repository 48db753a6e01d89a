"""vm.migrate: place (the planner, or the caller's host, never the current
one; capacity reserved there) -> migrate (the effector moves the domain;
the source's capacity released, or on failure the target's)."""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import affinity
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.release import release_on
from cloud_engine.engine.operations.vm_kind import PlacedVmKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmMigrate(PlacedVmKind):
    name = "vm.migrate"
    steps = ("place", "migrate")

    def prepare(
        self, uow: UnitOfWork, resource: VirtualMachine, request: Request
    ) -> OperationParams:
        # The source is recorded: placing refuses a VM that left it meanwhile.
        return OperationParams(
            forced=request.forced, host_id=request.host_id, source_host_id=resource.host_id
        )

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.require_state(["Running"], "migrate")
        if op.params.host_id is not None and op.params.host_id == resource.host_id:
            raise Validation(
                f"vm {resource.id} already runs on host {resource.host_id}", field="host_id"
            )
        pool = None if resource.pool_id is None else uow.find(StoragePool, resource.pool_id)
        if pool is not None and pool.host_id is not None:
            # Its disks would have to be copied while the guest writes them.
            raise Conflict(
                f"vm {resource.id} has its disks on host {pool.host_id}'s local pool"
                f" {pool.id}: a running VM migrates only on shared storage",
                field="vm_id",
            )

    def before_reserve(self, op: Operation, vm: VirtualMachine, host_id: UUID) -> None:
        vm.require_state(["Running"], "migrate")
        if op.params.source_host_id != vm.host_id:
            raise Conflict(f"vm {vm.id} left host {op.params.source_host_id}", field="vm_id")
        vm.migrate_requested(host_id)  # refuses the current host

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        if op.current_step == "migrate":
            _settle(uow, op, vm)

    def fail_vm(
        self, uow: UnitOfWork, op: Operation, vm: VirtualMachine, reason: str, *, timed_out: bool
    ) -> None:
        if not op.done("place"):
            failed(uow, op, reason)
            return
        if timed_out and vm.state == "Migrating":
            vm.migration_failed(reason)
        _settle(uow, op, vm)


def _settle(uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
    """Once the effector answered: the VM on the target (the source's
    capacity goes back) or not (the target's does)."""
    if vm.state == "Migrating":
        return
    source, target = op.params.source_host_id, op.chosen_host_id
    if vm.host_id == target and target is not None:
        release_on(uow, source, vm)
        done(uow, op, "migrate")
        return
    # It failed (still on the source) or the VM left Running meanwhile: the
    # target's reservation goes back, the group sees it where it is.
    release_on(uow, target, vm)
    if vm.affinity_group is not None and vm.host_id is not None:
        group = uow.find(affinity.AffinityGroup, affinity.group_id(vm.account, vm.affinity_group))
        if group is not None:
            group.restore(vm.id, vm.host_id)
    failed(uow, op, vm.last_error or f"vm {vm.id} is {vm.state}, not migrated")
