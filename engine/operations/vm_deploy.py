"""vm.deploy: a VM's deploy, its steps, each one transaction, and their
compensation.

    (DeployVm) VM, its volumes (Allocated), the Operation and the VM's guard
    place      host capacity reserved, each volume's pool reserved and its
               creation requested on that host, a NIC and IP on each network
               (the network implemented, with a tag, on first use), VM placed
    provision  once every volume is Ready: volumes attached, start requested
    start      once the VM runs: operation succeeded, guard released

The only kind whose resource does not exist before it: the DeployVm handler
(engine/commands/operations.py) creates the VM and its volumes, under ids
derived from the VM's (engine/operations/deploy_ids.py), before the
Operation, so there is nothing left for prepare and begin to do.

Effectors answer between steps (volume created, VM running); their results
arrive as events that make the engine call advance() again, which is
idempotent: it does what the current state calls for and nothing twice.

When a step fails (a volume or the start fails, no host fits), compensate()
undoes the earlier steps, again idempotently, waiting while effector work is
in flight: capacity, pool space, NICs and IPs released, volumes destroyed
(their files deleted by the effector), the VM failed with the reason and,
when it was ever placed, destroyed and expunged (the effector removes any
domain). A VM that was never placed ends in Error, nothing held.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from cloud_engine.engine.aggregate import require
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import affinity, guard
from cloud_engine.engine.operations.deploy_ids import ip_id, nic_id
from cloud_engine.engine.operations.kind import OperationKind, Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.release import (
    fail_vm,
    release_host,
    release_network,
    release_volume,
)
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume


class VmDeploy(OperationKind[VirtualMachine]):
    name = "vm.deploy"
    resource_type = "vm"
    steps = ("place", "provision", "start")
    placed = True

    def prepare(
        self, uow: UnitOfWork, resource: VirtualMachine, request: Request
    ) -> OperationParams:
        # Unreachable through the contract (VmOperationKind has no vm.deploy);
        # refused so a misrouted command cannot start a deploy without disks.
        raise Validation(f"{self.name} is started by DeployVm", field="kind")

    def begin(
        self, uow: UnitOfWork, op: Operation, resource: VirtualMachine, request: Request
    ) -> None:
        """Nothing: DeployVm made the VM and its volumes; placing is next."""

    def place(
        self, uow: UnitOfWork, op: Operation, host_id: UUID, pool_ids: Sequence[UUID]
    ) -> bool:
        if op.current_step != "place" or op.status not in ("pending", "running"):
            return False
        vm = uow.get(VirtualMachine, op.resource_id)
        volumes = volumes_of(uow, op)
        require(len(pool_ids) == len(volumes), "one pool per volume", field="pool_ids")
        host = uow.get(Host, host_id)
        host.require_state(["Enabled"], "place a VM on")
        require(host.zone_id == vm.zone_id, "host is in another zone", field="host_id")
        host.reserve(vm.id, vm.spec.cpus, vm.spec.ram_mb)
        for volume, pool_id in zip(volumes, pool_ids, strict=True):
            pool = uow.get(StoragePool, pool_id)
            pool.reserve(volume.id, volume.size_bytes)
            volume.create_requested(pool_id, host_id)
        for index, network_id in enumerate(vm.network_ids):
            network = uow.get(Network, network_id)
            _implement(uow, network)
            ip = ip_id(op.id, index)
            address = network.allocate_ip(ip, vm.id)
            address_record = IpAddress.create(
                network_id=network.id,
                address=address,
                owner_id=vm.id,
                # On a shared network the address is the VM's account's.
                account=vm.account if network.purpose == "shared" else None,
                id=ip,
            )
            uow.add(address_record)
            nic = Nic.create(
                vm_id=vm.id,
                network_id=network.id,
                device_id=index,
                ip_id=ip,
                address=address,
                id=nic_id(op.id, index),
            )
            uow.add(nic)
            address_record.associate(nic.id)
        if vm.affinity_group is not None and op.params.affinity is not None:
            affinity.admit(
                uow,
                vm.account,
                vm.affinity_group,
                op.params.affinity,
                op.params.affinity_strict,
                vm.id,
                host_id,
            )
        vm.place(host_id, pool_ids[0])
        op.complete_step("place")
        return True

    def advance(self, uow: UnitOfWork, op: Operation) -> None:
        if op.status == "compensating":
            compensate(uow, op)
            return
        if op.finished or op.current_step == "place":
            return  # placing needs the planner: the engine process calls place()
        vm = uow.get(VirtualMachine, op.resource_id)
        if op.current_step == "provision":
            volumes = volumes_of(uow, op)
            for volume in volumes:
                if volume.state == "Error":
                    _fail(uow, op, f"volume {volume.id}: {volume.last_error or 'creation failed'}")
                    return
            if any(v.state == "Creating" for v in volumes):
                return
            for device, volume in enumerate(volumes):
                if volume.state == "Ready":
                    volume.attach(vm.id, device)
                    vm.disk_attached(volume.id, device)
            if vm.host_id is None:
                _fail(uow, op, f"vm {vm.id} lost its host before it started")
                return
            vm.start_requested(vm.host_id)
            op.complete_step("provision")
        elif op.current_step == "start":
            if vm.state == "Running":
                op.complete_step("start")
                guard.release(uow, vm.id, op.id)
            elif vm.state == "Error":
                _fail(uow, op, vm.last_error or "the VM failed to start")

    def fail(self, uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool) -> None:
        """No host fits, or a step got no answer in time (then what waits for
        an effector is failed too, so compensation does not wait for it
        either). Before placing nothing is held: the operation ends failed
        and the VM in Error with the reason."""
        if op.status not in ("pending", "running"):
            return
        if op.current_step != "place":
            if timed_out:
                vm = uow.get(VirtualMachine, op.resource_id)
                if vm.state == "Starting":
                    fail_vm(uow, vm, reason)
                for volume in volumes_of(uow, op):
                    if volume.state == "Creating":
                        volume.fail(reason)
            _fail(uow, op, reason)
            return
        op.fail(reason, compensate=False)
        vm = uow.get(VirtualMachine, op.resource_id)
        if vm.state == "Allocated":
            vm.fail(reason)
        for volume in volumes_of(uow, op):
            if volume.state == "Allocated":
                volume.destroy()
        guard.release(uow, vm.id, op.id)


def volumes_of(uow: UnitOfWork, op: Operation) -> list[Volume]:
    return [uow.get(Volume, v) for v in op.params.volume_ids]


def _implement(uow: UnitOfWork, network: Network) -> None:
    """A network's first use gives it a tag (isolated kinds) and implements it."""
    if network.state == "Implemented":
        return
    network.require_state(["Allocated", "Shutdown"], "deploy a VM on")
    if network.isolation != "none" and network.tag is None:
        if network.physical_network_id is None:  # refused at creation; kept for mypy
            raise Conflict(f"network {network.id} has no physical network", field="network_ids")
        physical = uow.get(PhysicalNetwork, network.physical_network_id)
        network.assign_tag(physical.allocate_tag(network.id))  # implements it too
    else:
        network.implement()


def _fail(uow: UnitOfWork, op: Operation, reason: str) -> None:
    op.fail(reason, compensate=True)
    compensate(uow, op)


def compensate(uow: UnitOfWork, op: Operation) -> None:
    vm = uow.get(VirtualMachine, op.resource_id)
    volumes = volumes_of(uow, op)
    if vm.state in ("Starting", "Stopping", "Migrating", "Expunging"):
        return  # an effector is at work; its result brings us back here
    if any(v.state in ("Creating", "Resizing") for v in volumes):
        return
    reason = op.error or "deploy failed"
    affinity.leave(uow, vm.account, vm.affinity_group, vm.id)
    ever_placed = vm.host_id is not None or vm.last_host_id is not None
    release_host(uow, vm)
    release_network(uow, op.id, vm)
    for volume in volumes:
        release_volume(uow, volume, vm)
    if vm.state == "Allocated":
        vm.fail(reason)
    if not ever_placed:
        _finish(uow, op, vm)  # no domain can exist: the VM stays in Error
        return
    if vm.state in ("Running", "Stopped", "Error"):
        vm.destroy()
    if vm.state == "Destroyed" and vm.expunge_error is None:
        vm.expunge_requested()  # the effector removes the domain, if any
    elif vm.state in ("Destroyed", "Expunged"):
        # Destroyed here: the domain could not be removed; the rest is given
        # back and the VM keeps the reason, for an operator's expunge later.
        _finish(uow, op, vm)


def _finish(uow: UnitOfWork, op: Operation, vm: VirtualMachine) -> None:
    op.compensated()
    guard.release(uow, vm.id, op.id)
