"""volume.revert: revert (the effector applies the snapshot). Back to a
snapshot taken after a resize, the larger size is reserved first; to one
taken before, the pool keeps only what the volume then is."""

from __future__ import annotations

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.errors import Validation
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.lookups import load_ref
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.volume_kind import (
    VolumeKind,
    done,
    failed,
    reserve_recorded_size,
)
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.snapshot import REVERTIBLE, Snapshot
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VolumeRevert(VolumeKind):
    name = "volume.revert"
    steps = ("revert",)

    def prepare(self, uow: UnitOfWork, resource: Volume, request: Request) -> OperationParams:
        if request.snapshot_id is None:
            raise Validation(f"{self.name} needs snapshot_id", field="snapshot_id")
        return super().prepare(uow, resource, request)

    def begin_volume(
        self,
        uow: UnitOfWork,
        op: Operation,
        volume: Volume,
        vm: VirtualMachine | None,
        request: Request,
    ) -> None:
        target = op.params.target_id
        assert target is not None  # prepare checked it
        snapshot = load_ref(uow, Snapshot, target, "snapshot_id")
        require(
            snapshot.volume_id == volume.id, "snapshot is of another volume", field="snapshot_id"
        )
        snapshot.require_state(REVERTIBLE, "revert to")
        restored = snapshot.size_bytes
        if restored is not None and restored > volume.size_bytes and volume.pool_id is not None:
            # Back to a larger size (a snapshot taken after a resize): the
            # space is reserved first, as for a resize.
            uow.get(StoragePool, volume.pool_id).resize_reservation(volume.id, restored)
        volume.revert_requested(snapshot.id, restored)

    def advance_volume(self, uow: UnitOfWork, op: Operation, volume: Volume) -> None:
        if volume.reverting_to is not None:
            return
        if volume.state == "Error":
            failed(uow, op, volume.last_error or "the revert failed")
        else:
            # Less after a revert to a snapshot taken before a resize.
            reserve_recorded_size(uow, volume)
            done(uow, op, "revert")
