"""storage_pool.maintenance: prepare (the pool PrepareForMaintenance:
nothing new reserved on it) -> migrate (its volumes moved to another pool
of the same scope) -> maintenance (the pool in Maintenance).

Only volumes nothing uses can move (offline copies, volume.migrate): a
detached one, or one of a stopped VM. The request is refused at once
(409) with one reason per volume otherwise (its VM running, the volume
busy being created, resized, reverted or moved), and nothing changes.
The drainer (automation/drain.py) then asks one volume.migrate per volume
(MoveOffPool, the target a pool of the same scope in reach of the VM's
host, with the most room) and reports like a host's drain; a volume that
cannot move (no such pool, no room) blocks it in ErrorInMaintenance.
"""

from __future__ import annotations

import uuid
from uuid import UUID

from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.host_maintenance import DrainKind
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.volume_kind import VM_IDLE
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume

# Volume states a move starts from (not being created, resized, ...).
SETTLED = ("Ready", "Attached")


def move_id(drain_id: UUID, volume_id: UUID) -> UUID:
    """The one volume.migrate a pool's drain asks for a volume."""
    return uuid.uuid5(drain_id, f"move:{volume_id}")


class PoolMaintenance(DrainKind[StoragePool]):
    name = "storage_pool.maintenance"
    resource_type = "storage_pool"
    aggregate = StoragePool

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: StoragePool, request: Request
    ) -> None:
        reasons = [r for v in sorted(resource.reservations) if (r := _unmovable(uow, v))]
        if reasons:
            raise Conflict(
                f"storage pool {resource.id} cannot be drained: {'; '.join(reasons)}",
                field="pool_id",
            )
        super().begin(uow, op, resource, request)


def _unmovable(uow: UnitOfWork, volume_id: UUID) -> str | None:
    """Why the volume cannot be copied now (None: it can)."""
    volume = uow.find(Volume, volume_id)
    if volume is None or volume.state == "Destroyed":
        return None  # space held for something else, or given back soon
    if volume.state not in SETTLED or volume.moving_to is not None:
        busy = "moving" if volume.moving_to is not None else volume.state
        return f"volume {volume.id} is {busy}"
    vm = None if volume.vm_id is None else uow.find(VirtualMachine, volume.vm_id)
    if vm is not None and vm.state not in VM_IDLE:
        return f"volume {volume.id} is a disk of vm {vm.id}, which is {vm.state} (stop it first)"
    return None
