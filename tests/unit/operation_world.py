"""A small fabric on an in-memory unit of work, for the operation tests:
one zone, pod, cluster and host, a cluster pool, a plain and a VXLAN
network, a downloaded template."""

import copy
from uuid import UUID

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.commands.fabric import CreateCluster, CreatePod, CreateZone, RegisterHost
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    DeployVm,
    PlaceOperation,
    VmOperation,
)
from cloud_engine.engine.commands.physical_networks import CreatePhysicalNetwork
from cloud_engine.engine.commands.storage import (
    MarkTemplateDownloaded,
    RegisterTemplate,
    RequestTemplateDownload,
)
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.fabric.physical_network import TagRange
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume

GIB = 1 << 30


class World:
    def __init__(self) -> None:
        self.uow = InMemoryUnitOfWork()
        run = self.run
        self.zone = run(CreateZone(name="z"))
        pod = run(CreatePod(zone_id=self.zone, name="p", gateway="10.0.0.1", cidr="10.0.0.0/24"))
        cluster = run(CreateCluster(zone_id=self.zone, pod_id=pod, name="c"))
        self.pod, self.cluster = pod, cluster
        self.host = self.add_host("h")
        self.pool = run(
            CreateStoragePool(
                zone_id=self.zone,
                cluster_id=cluster,
                name="primary",
                scope="cluster",
                capacity_bytes=100 * GIB,
                url="/var/lib/pool",
            )
        )
        physical = run(
            CreatePhysicalNetwork(
                zone_id=self.zone, name="phys", isolation="VXLAN", tag_range=TagRange(5000, 5010)
            )
        )
        self.flat = run(
            CreateNetwork(
                account="acme", name="flat", zone_id=self.zone, cidr="10.1.0.0/24", isolation="none"
            )
        )
        self.overlay = run(
            CreateNetwork(
                account="acme",
                name="overlay",
                zone_id=self.zone,
                cidr="10.2.0.0/24",
                isolation="VXLAN",
                physical_network_id=physical,
            )
        )
        self.template = run(
            RegisterTemplate(
                name="t",
                zone_id=self.zone,
                url="https://images.example/t.qcow2",
                format="qcow2",
                size_bytes=GIB,
                os_type="Linux",
            )
        )
        run(RequestTemplateDownload(template_id=self.template))
        run(MarkTemplateDownloaded(template_id=self.template))

    def add_host(self, name: str) -> UUID:
        return self.run(
            RegisterHost(
                zone_id=self.zone,
                pod_id=self.pod,
                cluster_id=self.cluster,
                name=name,
                cpu_cores=8,
                ram_mb=16384,
                libvirt_uri="test:///default",
            )
        )

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
