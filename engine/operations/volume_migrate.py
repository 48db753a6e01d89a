"""volume.migrate: move (a volume's file copied offline to another pool by
an effector; the new pool's space reserved first, the old pool's given
back once it moved, or the new pool's if it did not).

The volume is detached or its VM idle (Stopped, Destroyed, Error: QEMU
holds a running guest's disks), which VolumeKind checks. The target pool
must be in the volume's zone, Enabled, with room, and reachable by the
host the VM starts on (its last host): a host's local pool only from that
host, a cluster's pool only from a host of that cluster. A VM that should
change hosts with its disks migrates (vm.migrate), it does not move them
one by one. Each refusal is a 4xx naming the reason, nothing recorded.

The effector does the copy (work volume.move, asked by the volume's
migration_requested): on one host within its libvirtd, between hosts
through both (effectors/storage/motion.py, as an offline VM migration's
disks). Its result is recorded on the volume (moved, or move_failed with
libvirt's error) and this kind settles the pools' space and, for a root
disk, the VM's record of its root pool.
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.lookups import load_ref
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.volume_kind import VolumeKind, compensated, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VolumeMigrate(VolumeKind):
    name = "volume.migrate"
    steps = ("move",)

    def prepare(self, uow: UnitOfWork, resource: Volume, request: Request) -> OperationParams:
        if request.pool_id is None:
            raise Validation(f"{self.name} needs pool_id", field="pool_id")
        if resource.pool_id is None:
            raise Conflict(f"volume {resource.id} is on no pool yet", field="volume_id")
        return OperationParams(
            vm_id=resource.vm_id, pool_id=request.pool_id, source_pool_id=resource.pool_id
        )

    def begin_volume(
        self,
        uow: UnitOfWork,
        op: Operation,
        volume: Volume,
        vm: VirtualMachine | None,
        request: Request,
    ) -> None:
        assert op.params.pool_id is not None and op.params.source_pool_id is not None
        target = load_ref(uow, StoragePool, op.params.pool_id, "pool_id")
        source = uow.get(StoragePool, op.params.source_pool_id)
        if target.id == source.id:
            raise Validation(f"volume {volume.id} is on pool {target.id} already", field="pool_id")
        if target.zone_id != volume.zone_id:
            raise Validation(
                f"pool {target.id} is in zone {target.zone_id}, volume {volume.id} in"
                f" {volume.zone_id}",
                field="pool_id",
            )
        host = _vm_host(uow, vm)
        if host is not None and not _reaches(host, target):
            raise Conflict(
                f"vm {host[0]}'s host {host[1].id} does not reach pool {target.id}"
                f" ({target.scope} scope): migrate the VM to move it with its disks",
                field="pool_id",
            )
        if host is None and vm is not None and target.host_id is not None:
            raise Conflict(
                f"vm {vm.id} has never run on a host: its disk goes to a shared pool only",
                field="pool_id",
            )
        target.reserve(volume.id, volume.size_bytes)  # Enabled, with room: else refused
        volume.migration_requested(target.id, _reached_from(host, source, target))

    def advance_volume(self, uow: UnitOfWork, op: Operation, volume: Volume) -> None:
        if volume.moving_to is not None:
            return  # the effector has not answered
        target, source = op.params.pool_id, op.params.source_pool_id
        assert target is not None and source is not None
        moved = volume.pool_id == target
        # The space goes back where the file is not.
        freed = uow.get(StoragePool, source if moved else target)
        if volume.id in freed.reservations:
            freed.release(volume.id)
        if not moved:
            compensated(uow, op, volume.last_error or f"volume {volume.id} was not moved")
            return
        vm = None if volume.vm_id is None else uow.find(VirtualMachine, volume.vm_id)
        if vm is not None and vm.disks.get(0) == volume.id and vm.state == "Stopped":
            vm.root_pool_moved(target)
        done(uow, op, "move")

    def fail(self, uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool) -> None:
        if op.status not in ("pending", "running"):
            return
        volume = uow.get(Volume, op.resource_id)
        if volume.moving_to is None:
            self.advance(uow, op)
            return
        if not timed_out:
            failed(uow, op, reason)  # unreachable: a move is never placed
            return
        # The effector's late result is refused from now on (the move is
        # no longer pending); the reconciler reports a file it left behind.
        volume.move_failed(reason)
        self.advance(uow, op)


def _vm_host(uow: UnitOfWork, vm: VirtualMachine | None) -> tuple[UUID, Host] | None:
    """The host the volume's VM starts on (its last), if it has one."""
    if vm is None:
        return None
    host_id = vm.host_id or vm.last_host_id
    return None if host_id is None else (vm.id, uow.get(Host, host_id))


def _reaches(found: tuple[UUID, Host], pool: StoragePool) -> bool:
    host = found[1]
    return pool.host_id in (None, host.id) and pool.cluster_id in (None, host.cluster_id)


def _reached_from(
    found: tuple[UUID, Host] | None, source: StoragePool, target: StoragePool
) -> UUID | None:
    """The host that writes the copy: the target's own if it is a host's
    local pool, else the VM's, else the source's if local (and in the
    target's cluster); None lets the effector take any enabled host of
    the target's cluster."""
    if target.host_id is not None:
        return target.host_id
    if found is not None:
        return found[1].id
    if source.host_id is not None and target.cluster_id in (None, source.cluster_id):
        return source.host_id
    return None
