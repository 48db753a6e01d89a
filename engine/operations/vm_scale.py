"""vm.scale: scale (a stopped VM's vCPUs and RAM changed, in one
transaction with any host capacity it holds).

QEMU fixes a guest's vCPUs and RAM when it starts, so only a Stopped VM
scales; a running one is refused at once (409) with that reason. A stopped
VM normally holds no host capacity (its stop gave it back): the new size
is recorded and its next start reserves it, the planner choosing a host
with room (a start that finds none fails and the VM stays Stopped, scaled).
If it still holds a reservation somewhere, that one is swapped for the new
size in the same transaction, or the scale is refused (409, the host's
free capacity named) and nothing changes: the step either happened whole
or not at all, so there is nothing to compensate afterwards.
"""

from __future__ import annotations

from cloud_engine.engine.errors import Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.kind import Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.vm_kind import VmKind, done
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine


class VmScale(VmKind):
    name = "vm.scale"
    steps = ("scale",)

    def prepare(
        self, uow: UnitOfWork, resource: VirtualMachine, request: Request
    ) -> OperationParams:
        if request.cpus is None and request.ram_mb is None:
            raise Validation(f"{self.name} needs cpus or ram_mb", field="cpus")
        return OperationParams(
            cpus=resource.spec.cpus if request.cpus is None else request.cpus,
            ram_mb=resource.spec.ram_mb if request.ram_mb is None else request.ram_mb,
        )

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        cpus, ram_mb = op.params.cpus, op.params.ram_mb
        assert cpus is not None and ram_mb is not None  # prepare filled them
        resource.scale(cpus, ram_mb)  # refuses a VM that is not Stopped
        for host_id in {resource.host_id, resource.last_host_id}:
            host = None if host_id is None else uow.get(Host, host_id)
            if host is not None and resource.id in host.reservations:
                host.release(resource.id)
                host.reserve(resource.id, cpus, ram_mb)  # CapacityExceeded: nothing kept
        done(uow, op, "scale")

    def advance_vm(self, uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
        # begin did the only step; an operation left unfinished cannot exist.
        return
