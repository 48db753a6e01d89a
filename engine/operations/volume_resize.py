"""volume.resize: resize (the pool reservation grows first and shrinks back
if the effector fails). Volumes only grow."""

from __future__ import annotations

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.errors import Validation
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.volume_kind import (
    VolumeKind,
    compensated,
    done,
    reserve_recorded_size,
)
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VolumeResize(VolumeKind):
    name = "volume.resize"
    steps = ("resize",)

    def prepare(self, uow: UnitOfWork, resource: Volume, request: Request) -> OperationParams:
        if request.new_size_bytes is None:
            raise Validation(f"{self.name} needs new_size_bytes", field="new_size_bytes")
        return super().prepare(uow, resource, request)

    def begin_volume(
        self,
        uow: UnitOfWork,
        op: Operation,
        volume: Volume,
        vm: VirtualMachine | None,
        request: Request,
    ) -> None:
        size = op.params.size_bytes
        assert size is not None  # prepare checked it
        volume.require_state(["Ready", "Attached"], "resize")
        require(
            size > volume.size_bytes,
            f"volumes only grow: {size} is not above {volume.size_bytes}",
            field="new_size_bytes",
        )
        if volume.pool_id is not None:
            uow.get(StoragePool, volume.pool_id).resize_reservation(volume.id, size)
        volume.resize_requested(size)

    def advance_volume(self, uow: UnitOfWork, op: Operation, volume: Volume) -> None:
        if volume.state == "Resizing":
            return
        if volume.state == "Error":
            # The file kept its size: the growth reserved on the pool goes back.
            reserve_recorded_size(uow, volume)
            compensated(uow, op, volume.last_error or "the resize failed")
        else:
            done(uow, op, "resize")
