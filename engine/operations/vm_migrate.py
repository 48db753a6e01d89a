"""vm.migrate: place (the planner, or the caller's host, never the current
one; capacity reserved there) -> migrate (the effector moves the domain;
the source's capacity released, or on failure the target's).

A running VM migrates live, its disks staying where they are: they must be
on shared storage. A stopped VM migrates offline: its disks on a host's
local pool are copied to the pools the planner chose for the destination
(each volume's move requested, the space reserved there), the others stay;
it holds the destination while they move and ends Stopped with the
destination as its last host, the volumes in their new pools and the old
pools' space given back, or, if the copy failed, where it was with the new
pools' space given back.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import affinity
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.release import release_on
from cloud_engine.engine.operations.vm_kind import PlacedVmKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VmMigrate(PlacedVmKind):
    name = "vm.migrate"
    steps = ("place", "migrate")

    def prepare(
        self, uow: UnitOfWork, resource: VirtualMachine, request: Request
    ) -> OperationParams:
        # The source is recorded: placing refuses a VM that left it meanwhile.
        if resource.state == "Stopped":
            # Its disks, root first: the planner finds them pools there.
            disks = tuple(v for _, v in sorted(resource.disks.items()))
            return OperationParams(
                host_id=request.host_id, source_host_id=resource.last_host_id, volume_ids=disks
            )
        return OperationParams(
            forced=request.forced, host_id=request.host_id, source_host_id=resource.host_id
        )

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        resource.require_state(["Running", "Stopped"], "migrate")
        if op.params.host_id is not None and op.params.host_id == op.params.source_host_id:
            raise Validation(
                f"vm {resource.id} is on host {op.params.source_host_id} already",
                field="host_id",
            )
        if resource.state == "Stopped":
            if op.params.source_host_id is None:
                raise Conflict(f"vm {resource.id} has never run on a host", field="vm_id")
            return
        pool = None if resource.pool_id is None else uow.find(StoragePool, resource.pool_id)
        if pool is not None and pool.host_id is not None:
            # Its disks would have to be copied while the guest writes them.
            raise Conflict(
                f"vm {resource.id} has its disks on host {pool.host_id}'s local pool"
                f" {pool.id}: a running VM migrates only on shared storage (stop it to"
                " migrate it with its disks)",
                field="vm_id",
            )

    def place(
        self, uow: UnitOfWork, op: Operation, host_id: UUID, pool_ids: Sequence[UUID]
    ) -> bool:
        if not op.params.volume_ids:  # a running VM: its disks stay
            return super().place(uow, op, host_id, pool_ids)
        if op.current_step != "place" or op.status not in ("pending", "running"):
            return False
        vm = uow.get(VirtualMachine, op.resource_id)
        vm.require_state(["Stopped"], "migrate")
        if op.params.source_host_id != vm.last_host_id:
            raise Conflict(f"vm {vm.id} left host {op.params.source_host_id}", field="vm_id")
        host = uow.get(Host, host_id)
        host.require_state(["Enabled"], "place a VM on")
        chosen = dict(zip(op.params.volume_ids, pool_ids, strict=False))
        for volume_id in op.params.volume_ids:
            _move(uow, uow.get(Volume, volume_id), host, chosen.get(volume_id))
        vm.migrate_requested(host_id)  # refuses the host it is on
        host.reserve(vm.id, vm.spec.cpus, vm.spec.ram_mb)  # held while its disks move
        op.choose_host(host_id)
        op.complete_step("place")
        return True

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
        if timed_out and vm.state == "Migrating" and not vm.migrating_stopped:
            # The effector may still be moving it, or have moved it with its
            # answer on the way: guessing the source (as this did) left
            # guests running on the destination with the record elsewhere.
            # Both hosts stay reserved until the answer or the reconciler
            # says where it runs (settle_late).
            vm.timed_out(f"{reason}; where it runs is settled by what the hosts show")
            failed(uow, op, reason)
            return
        if timed_out and vm.state == "Migrating":
            vm.migration_failed(reason)
        _settle(uow, op, vm)


def settle_late(uow: UnitOfWork, vm: VirtualMachine, *, free: UUID | None) -> None:
    """A timed-out live migration settled (the effector's late answer, or
    the destination seen running): the host it does not run on (free)
    gives its reservation back, and its affinity group sees it where it
    runs."""
    release_on(uow, free, vm)
    if vm.affinity_group is not None and vm.host_id is not None:
        group = uow.find(affinity.AffinityGroup, affinity.group_id(vm.account, vm.affinity_group))
        if group is not None:
            group.restore(vm.id, vm.host_id)


def _move(uow: UnitOfWork, volume: Volume, host: Host, pool_id: UUID | None) -> None:
    """A stopped VM's disk for the destination host: one on a shared pool of
    its cluster stays; one on another host's local pool moves to the pool
    the planner chose (space reserved there)."""
    assert volume.pool_id is not None  # an attached disk was created on a pool
    pool = uow.get(StoragePool, volume.pool_id)
    if pool.host_id is None and pool.cluster_id in (None, host.cluster_id):
        return
    if pool_id is None or pool_id == pool.id:
        raise Validation(f"no pool on host {host.id} for volume {volume.id}", field="pool_ids")
    target = uow.get(StoragePool, pool_id)
    if target.host_id not in (None, host.id) or target.cluster_id not in (None, host.cluster_id):
        raise Validation(f"host {host.id} does not reach pool {target.id}", field="pool_ids")
    target.reserve(volume.id, volume.size_bytes)
    volume.move_requested(target.id, host.id)


def _settle(uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
    """Once the effector answered: the VM on the target (the source's
    capacity goes back) or not (the target's does)."""
    if vm.state == "Migrating":
        return
    source, target = op.params.source_host_id, op.chosen_host_id
    if op.params.volume_ids:
        _settle_stopped(uow, op, vm)
        return
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


def _settle_stopped(uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
    """An offline migration answered: the disks moved (their old pools'
    space goes back) or not (their new pools' does); the target's capacity,
    held while they moved, goes back either way."""
    target = op.chosen_host_id
    release_on(uow, target, vm)
    moved = target is not None and vm.last_host_id == target
    for volume_id in op.params.volume_ids:
        volume = uow.get(Volume, volume_id)
        if volume.moving_to is None:
            continue
        assert volume.pool_id is not None
        # The space goes back where the disk is not (any more, or at all).
        freed = uow.get(StoragePool, volume.pool_id if moved else volume.moving_to)
        if volume.id in freed.reservations:
            freed.release(volume.id)
        if moved:
            volume.moved()
            if vm.disks.get(0) == volume.id and volume.pool_id is not None:
                vm.root_pool_moved(volume.pool_id)
        else:
            volume.move_cancelled()
    if moved:
        done(uow, op, "migrate")
    else:
        failed(uow, op, vm.last_error or f"vm {vm.id} is {vm.state}, not migrated")
