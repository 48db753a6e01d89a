"""A small fabric on an in-memory unit of work, for the operation tests:
one zone, pod, cluster and host, a cluster pool, a plain and a VXLAN
network, a downloaded template."""

import copy
import dataclasses
from uuid import UUID

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    DeployVm,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume
from tests.fabric import (
    FabricSpec,
    HostSpec,
    NetworkSpec,
    PhysicalNetworkSpec,
    PoolSpec,
    TemplateSpec,
    build_with,
    host_command,
)

GIB = 1 << 30

HOST = HostSpec(cpu_cores=8, ram_mb=16384)
FABRIC = FabricSpec(
    hosts=(HOST,),
    pools=(PoolSpec(url="/var/lib/pool", capacity_bytes=100 * GIB),),
    physical_networks=(PhysicalNetworkSpec(name="phys", tags=(5000, 5010)),),
    templates=(
        TemplateSpec(
            name="t", url="https://images.example/t.qcow2", size_bytes=GIB, os_type="Linux"
        ),
    ),
    networks=(
        NetworkSpec(name="flat", cidr="10.1.0.0/24"),
        NetworkSpec(name="overlay", cidr="10.2.0.0/24", isolation="VXLAN", physical=True),
    ),
)


class World:
    def __init__(self) -> None:
        self.uow = InMemoryUnitOfWork()
        self.fabric = fabric = build_with(self.run, FABRIC)
        self.zone, self.pod, self.cluster = fabric.zone, fabric.pod, fabric.cluster
        self.host, self.pool, self.template = fabric.host, fabric.pool, fabric.template
        self.flat, self.overlay = fabric.networks

    def add_host(self, name: str) -> UUID:
        return self.run(host_command(self.fabric, dataclasses.replace(HOST, name=name)))

    def running_vm(self, **overrides) -> tuple[UUID, UUID]:
        """A deployed VM, Running on self.host: (operation id, vm id)."""
        op_id, vm_id = self.deploy(**overrides)
        op = self.uow.get(Operation, op_id)
        pools = (self.pool,) * len(op.params.volume_ids)
        self.run(PlaceOperation(operation_id=op_id, host_id=self.host, pool_ids=pools))
        for volume_id in op.params.volume_ids:
            self.uow.get(Volume, volume_id).created()
        self.run(AdvanceOperation(operation_id=op_id))
        self.uow.get(VirtualMachine, vm_id).mark_running()
        self.run(AdvanceOperation(operation_id=op_id))
        assert op.status == "succeeded"
        return op_id, vm_id

    def stopped_vm(self, **overrides) -> tuple[UUID, UUID]:
        op_id, vm_id = self.running_vm(**overrides)
        stop = self.run(VmOperation(kind="vm.stop", vm_id=vm_id))
        self.uow.get(VirtualMachine, vm_id).mark_stopped()
        self.run(AdvanceOperation(operation_id=stop))
        return op_id, vm_id

    def run(self, command) -> UUID:
        """Dispatch like the command service: a refused command changes nothing
        (its aggregates are put back in place, so references stay valid)."""
        saved = {i: copy.deepcopy(a.__dict__) for i, a in self.uow.aggregates.items()}
        try:
            return dispatch(self.uow, command).aggregate_id
        except Exception:
            for aggregate_id in list(self.uow.aggregates):
                if aggregate_id not in saved:
                    del self.uow.aggregates[aggregate_id]
                    continue
                state = self.uow.aggregates[aggregate_id].__dict__
                state.clear()
                state.update(saved[aggregate_id])
            raise

    def get(self, cls, aggregate_id):
        return self.uow.get(cls, aggregate_id)

    def deploy(self, **overrides) -> tuple[UUID, UUID]:
        values = {
            "account": "acme",
            "name": "web",
            "zone_id": self.zone,
            "template_id": self.template,
            "spec": VmSpec(cpus=2, ram_mb=2048, root_disk_gb=10),
            "network_ids": (self.flat, self.overlay),
            "data_disks_gb": (5,),
        }
        values.update(overrides)
        outcome = dispatch(self.uow, DeployVm(**values))
        return outcome.aggregate_id, UUID(str(outcome.value))
