"""volume.attach: create (an Allocated volume is created on the VM's pool,
on the VM's host) -> attach (the VM's lowest free device). Takes effect at
the VM's next start, whose domain is defined with every attached volume."""

from __future__ import annotations

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.lookups import load_ref
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.release import release_space
from cloud_engine.engine.operations.volume_kind import VolumeKind, compensated, done, failed, vm_of
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VolumeAttach(VolumeKind):
    name = "volume.attach"
    steps = ("create", "attach")

    def prepare(self, uow: UnitOfWork, resource: Volume, request: Request) -> OperationParams:
        if request.vm_id is None:
            raise Validation(f"{self.name} needs vm_id", field="vm_id")
        load_ref(uow, VirtualMachine, request.vm_id, "vm_id")
        return OperationParams(
            vm_id=request.vm_id, size_bytes=request.new_size_bytes, target_id=request.snapshot_id
        )

    def begin_volume(
        self,
        uow: UnitOfWork,
        op: Operation,
        volume: Volume,
        vm: VirtualMachine | None,
        request: Request,
    ) -> None:
        assert vm is not None  # prepare checked it
        require(volume.kind == "data", "only data volumes are attached", field="volume_id")
        require(vm.zone_id == volume.zone_id, "vm is in another zone", field="vm_id")
        require(vm.account == volume.account, "vm belongs to another account", field="vm_id")
        if volume.attached:
            raise Conflict(
                f"volume {volume.id} is attached to vm {volume.vm_id}", field="volume_id"
            )
        if vm.pool_id is None:
            raise Conflict(f"vm {vm.id} has no disks yet", field="vm_id")
        home = uow.get(StoragePool, vm.pool_id)
        if volume.state == "Allocated":
            # Created where the VM's root disk lives: reachable wherever it runs.
            home.reserve(volume.id, volume.size_bytes)
            volume.create_requested(home.id, vm.host_id or vm.last_host_id)
            return
        volume.require_state(["Ready"], "attach")
        assert volume.pool_id is not None  # Ready volumes were created on a pool
        pool = uow.get(StoragePool, volume.pool_id)
        if pool.cluster_id is not None and pool.cluster_id != home.cluster_id:
            raise Validation(
                f"volume {volume.id} is on pool {pool.id} in cluster {pool.cluster_id};"
                f" vm {vm.id} runs in cluster {home.cluster_id}",
                field="volume_id",
            )
        if pool.host_id is not None and pool.host_id != home.host_id:
            # A host's local disk reaches only that host's VMs.
            raise Validation(
                f"volume {volume.id} is on host {pool.host_id}'s local pool {pool.id};"
                f" vm {vm.id}'s disks are not on that host",
                field="volume_id",
            )

    def advance_volume(self, uow: UnitOfWork, op: Operation, volume: Volume) -> None:
        if op.current_step == "create":
            if volume.state == "Error":
                release_space(uow, volume)
                compensated(uow, op, volume.last_error or "the volume could not be created")
            elif volume.state == "Ready":
                op.complete_step("create")
                self.advance(uow, op)
        elif op.current_step == "attach":
            vm = vm_of(uow, op)
            if vm is None:
                failed(uow, op, "the VM is gone")
                return
            device = vm.free_device()
            volume.attach(vm.id, device)
            vm.disk_attached(volume.id, device)
            done(uow, op, "attach")
