"""volume.detach: detach (done at once, in the creating transaction; root
volumes stay with their VM). Takes effect at the VM's next start."""

from __future__ import annotations

from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.volume_kind import VolumeKind, done
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VolumeDetach(VolumeKind):
    name = "volume.detach"
    steps = ("detach",)

    def begin_volume(
        self,
        uow: UnitOfWork,
        op: Operation,
        volume: Volume,
        vm: VirtualMachine | None,
        request: Request,
    ) -> None:
        if vm is None:
            raise Conflict(f"volume {volume.id} is not attached", field="volume_id")
        volume.detach()
        vm.disk_detached(volume.id)

    def advance_volume(self, uow: UnitOfWork, op: Operation, volume: Volume) -> None:
        done(uow, op, "detach")
