"""volume.snapshot: snapshot (a Snapshot created, guarded by the operation
too; the effector makes it)."""

from __future__ import annotations

from uuid import uuid4

import msgspec

from cloud_engine.engine.lookups import require_new_id
from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.volume_kind import VolumeKind, done, failed
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.snapshot import Snapshot
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VolumeSnapshot(VolumeKind):
    name = "volume.snapshot"
    steps = ("snapshot",)
    guards_target = True  # so the engine finds the operation from the snapshot's events

    def prepare(self, uow: UnitOfWork, resource: Volume, request: Request) -> OperationParams:
        snapshot_id = request.snapshot_id
        if snapshot_id is None:
            snapshot_id = uuid4()
            uow.known_absent((snapshot_id, guard.guard_id(snapshot_id)))
        require_new_id(uow, snapshot_id, field="snapshot_id")
        params = super().prepare(uow, resource, request)
        return msgspec.structs.replace(params, target_id=snapshot_id)

    def begin_volume(
        self,
        uow: UnitOfWork,
        op: Operation,
        volume: Volume,
        vm: VirtualMachine | None,
        request: Request,
    ) -> None:
        volume.require_snapshot_source()
        assert op.params.target_id is not None  # prepare chose it
        uow.add(
            Snapshot.create(
                volume.id,
                request.snapshot_name,
                request.snapshot_kind,
                size_bytes=volume.size_bytes,
                id=op.params.target_id,
            )
        )

    def advance_volume(self, uow: UnitOfWork, op: Operation, volume: Volume) -> None:
        assert op.params.target_id is not None
        snapshot = uow.get(Snapshot, op.params.target_id)
        if snapshot.state == "Error":
            failed(uow, op, snapshot.last_error or "the snapshot failed")
        elif snapshot.state != "Creating":
            done(uow, op, "snapshot")

    def abandon(self, uow: UnitOfWork, op: Operation, reason: str) -> None:
        if op.params.target_id is None:
            return
        snapshot = uow.get(Snapshot, op.params.target_id)
        if snapshot.state == "Creating":
            snapshot.fail(reason)
