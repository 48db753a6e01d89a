"""Giving back what a VM holds: host capacity, pool space, volumes, NICs
and IPs. Shared by the deploy's compensation, the lifecycle kinds (stop,
destroy, a failed start or migration) and the expunge.

Every helper is idempotent: each part is given back only if still held, so
a compensation or an expunge that runs again (another engine, a redelivered
event) releases nothing twice.
"""

from __future__ import annotations

from uuid import UUID

from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import affinity, deploy_ids
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume

# At most this many volumes are looked for under a deploy's derived ids.
MAX_VOLUMES = 32


def release_volume(uow: UnitOfWork, volume: Volume, vm: VirtualMachine) -> None:
    """Detached from the VM, destroyed (the effector deletes its file), its
    pool space given back; each part only if not done already. A volume
    attached to another VM meanwhile is left alone."""
    if volume.vm_id == vm.id:
        volume.detach(vm_expunging=True)
        vm.disk_detached(volume.id)
    if volume.state in ("Allocated", "Ready", "Error"):
        volume.destroy()
    if volume.state == "Destroyed":
        release_space(uow, volume)


def release_space(uow: UnitOfWork, volume: Volume) -> None:
    """The volume's pool space given back, if it still holds it."""
    if volume.pool_id is None:
        return
    pool = uow.get(StoragePool, volume.pool_id)
    if volume.id in pool.reservations:
        pool.release(volume.id)


def release_host(uow: UnitOfWork, vm: VirtualMachine) -> None:
    for host_id in {vm.host_id, vm.last_host_id}:
        release_on(uow, host_id, vm)


def fail_vm(uow: UnitOfWork, vm: VirtualMachine, reason: str) -> None:
    """The VM failed (Error) and left its host: the capacity it held there
    (and on a migration's target) is given back in the same transaction.
    A failed VM holds no host (vm.py), so a reservation kept past this
    point belongs to no placed VM: a stop the effector failed used to
    leave one behind, since the stop has nothing else to compensate. (A
    step that got no answer is another matter: vm.timed_out, unsettled,
    keeps its host until convergence records what the domain shows.)"""
    held = {vm.host_id, vm.migration_target_id}
    vm.fail(reason)
    for host_id in held:
        release_on(uow, host_id, vm)


def release_on(uow: UnitOfWork, host_id: UUID | None, vm: VirtualMachine) -> None:
    """The VM's capacity on that host given back, if it still holds it."""
    # find, not get: a host the record does not know (a VM placed by hand,
    # PlaceVm) holds nothing, and an effector's failure must still record.
    host = None if host_id is None else uow.find(Host, host_id)
    if host is not None and vm.id in host.reservations:
        host.release(vm.id)


def release_network(uow: UnitOfWork, op_id: UUID, vm: VirtualMachine) -> None:
    """The NICs and IPs the deploy op_id made for the VM, released."""
    for index in range(len(vm.network_ids)):
        nic = uow.find(Nic, deploy_ids.nic_id(op_id, index))
        if nic is not None and nic.state in ("Allocated", "Unplugged"):
            nic.release()
        ip = uow.find(IpAddress, deploy_ids.ip_id(op_id, index))
        if ip is None or ip.state == "Released":
            continue
        if ip.state == "Associated":
            ip.disassociate()
        uow.get(Network, ip.network_id).release_ip(ip.address)
        ip.release()


def release_resources(uow: UnitOfWork, vm: VirtualMachine) -> None:
    """What the VM's deploy made, once the VM is expunged: its volumes
    destroyed, NICs and IPs released; volumes attached later are detached
    (they outlive the VM)."""
    deploy_op = deploy_ids.operation_id(vm.id)
    release_host(uow, vm)
    affinity.leave(uow, vm.account, vm.affinity_group, vm.id)
    release_network(uow, deploy_op, vm)
    for index in range(MAX_VOLUMES):
        volume = uow.find(Volume, deploy_ids.volume_id(deploy_op, index))
        if volume is None:
            break
        release_volume(uow, volume, vm)
    for volume_id in list(vm.disks.values()):
        volume = uow.find(Volume, volume_id)
        if volume is not None and volume.vm_id == vm.id:
            volume.detach(vm_expunging=True)
        vm.disk_detached(volume_id)
