"""VM work: a domain started, stopped, rebooted, destroyed, undefined or
migrated on the VM's host."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import msgspec
import structlog

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.compute.driver import ComputeDriver, DomainMissing, DomainNotRunning
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec, DomainState, NicSpec
from cloud_engine.effectors.desired import (
    HostView,
    NetworkView,
    NicView,
    PoolView,
    VmView,
    VolumeView,
)
from cloud_engine.effectors.handlers.base import Handler, Reads, shared
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import Unsupported, network_spec, pool_spec
from cloud_engine.effectors.network.driver import NetworkDriver, NetworkDriverError
from cloud_engine.effectors.network.spec import DhcpHost
from cloud_engine.effectors.storage.pools import StorageError, ensure_pool
from cloud_engine.effectors.storage.volumes import StorageDriver

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

log = structlog.get_logger("effectors.handlers.vm")


class VmPlan(msgspec.Struct, frozen=True):
    """Everything a VM's domain needs, read from the read models."""

    vm: VmView
    host: HostView
    disks: tuple[tuple[VolumeView, PoolView], ...] = ()
    nics: tuple[tuple[NicView, NetworkView], ...] = ()
    destination: HostView | None = None  # vm.migrate: the target host

    @property
    def host_id(self) -> UUID:
        return self.host.id


# Plans ---------------------------------------------------------------------------


async def read_plan(reads: Reads, item: WorkItem) -> VmPlan | None:
    models = reads.models
    vm = await models.get(VmView, "vm", item.aggregate_id, item.version)
    if vm is None or not reads.serves(vm.zone_id):
        return None
    # A destroyed or expunging VM has left its host; its domain is still there.
    host_id = vm.host_id or vm.last_host_id
    if host_id is None:
        log.warning("vm_work_without_host", vm_id=str(vm.id), kind=item.kind)
        return None
    host = await models.get(HostView, "host", host_id)
    if host is None:
        return None
    disks: list[tuple[VolumeView, PoolView]] = []
    for volume in await _disks(reads, vm):
        if volume.pool_id is None or volume.state in ("Destroyed", "Error"):
            continue
        pool = await models.get(PoolView, "storage_pool", volume.pool_id)
        if pool is not None:
            disks.append((volume, pool))
    disks.sort(key=lambda d: d[0].device_id or 0)
    nics: list[tuple[NicView, NetworkView]] = []
    for nic in await models.where(NicView, "nic", "vm_id", vm.id):
        if nic.state == "Released":
            continue
        network = await models.get(NetworkView, "network", nic.network_id)
        if network is not None:
            nics.append((nic, network))
    nics.sort(key=lambda n: n[0].device_id)
    return VmPlan(vm=vm, host=host, disks=tuple(disks), nics=tuple(nics))


async def read_migration_plan(reads: Reads, item: WorkItem) -> VmPlan | None:
    """The VM's plan and the host it moves to."""
    found = await read_plan(reads, item)
    if found is None or found.vm.migration_target_id is None:
        return found
    target = await reads.models.get(HostView, "host", found.vm.migration_target_id)
    return msgspec.structs.replace(found, destination=target)


async def _disks(reads: Reads, vm: VmView) -> list[VolumeView]:
    """The VM's volumes as of the VM's version: its own list of disks (the
    volumes' rows may lag behind it), else (VMs recorded before VMs listed
    their disks) the volumes whose rows name it."""
    if not vm.disks:
        return await reads.models.where(VolumeView, "volume", "vm_id", vm.id)
    found = []
    for device, volume_id in sorted((int(d), v) for d, v in vm.disks.items()):
        volume = await reads.models.get(VolumeView, "volume", volume_id, 1)
        if volume is not None:
            found.append(msgspec.structs.replace(volume, device_id=device))
    return found


# Acts ----------------------------------------------------------------------------


def _compute(executor: Executor, plan: VmPlan) -> ComputeDriver:
    return ComputeDriver(executor.hypervisor(plan.host.libvirt_uri))


def start(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    compute = _compute(executor, plan)
    _realise_networks(executor, plan)
    _ensure_volumes_exist(executor, plan)
    compute.define(_domain_spec(executor, plan))
    executor.fault("after-define")
    return compute.start(plan.vm.id).state.state


def stop(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    compute = _compute(executor, plan)
    stopped = compute.stop(plan.vm.id, timeout_s=executor.stop_timeout_s, force=item.forced)
    return stopped.state.state


def reboot(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    return _compute(executor, plan).reboot(plan.vm.id).state.state


def destroy(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    return _compute(executor, plan).destroy(plan.vm.id).state.state


def expunge(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    return _compute(executor, plan).undefine(plan.vm.id).state.state


def migrate(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    compute = _compute(executor, plan)
    target = plan.destination
    if target is None:
        raise Unsupported(f"vm {plan.vm.id} has no migration target")
    destination = msgspec.structs.replace(plan, host=target, destination=None)
    _realise_networks(executor, destination)
    if target.libvirt_uri == plan.host.libvirt_uri:
        # Two engine hosts on one hypervisor (a lab or demo fabric): the
        # domain already runs "there"; libvirt refuses a migration to itself.
        observed: DomainState = compute.observe(plan.vm.id)
        if observed.state != "running":
            raise DomainNotRunning(plan.vm.id, observed.state)
        return observed.state
    return compute.migrate(plan.vm.id, executor.hypervisor(target.libvirt_uri)).state.state


def _domain_spec(executor: Executor, plan: VmPlan) -> DomainSpec:
    names = executor.names
    disks = tuple(
        DiskSpec(
            path=str(Path(pool_spec(names, pool).path) / names.volume(volume.id)),
            target=f"vd{chr(ord('a') + (volume.device_id or 0))}",
        )
        for volume, pool in plan.disks
    )
    nics = tuple(
        NicSpec(mac=nic.mac, network=names.network(network.id)) for nic, network in plan.nics
    )
    return DomainSpec(
        uuid=plan.vm.id,
        name=names.domain(plan.vm.id),
        vcpus=plan.vm.spec.cpus,
        memory_mb=plan.vm.spec.ram_mb,
        disks=disks,
        nics=nics,
        domain_type=executor.domain_type,
    )


def _realise_networks(executor: Executor, plan: VmPlan) -> None:
    driver = NetworkDriver(executor.hypervisor(plan.host.libvirt_uri))
    for nic, network in plan.nics:
        spec = network_spec(executor.names, network, executor.uplink)
        with shared(plan.host.libvirt_uri, "network", spec.name):
            driver.ensure(spec)
            driver.add_dhcp_host(spec.name, DhcpHost(mac=nic.mac, ip=nic.address))


def _ensure_volumes_exist(executor: Executor, plan: VmPlan) -> None:
    storage = StorageDriver(executor.hypervisor(plan.host.libvirt_uri))
    for volume, pool in plan.disks:
        spec = pool_spec(executor.names, pool)
        with shared(storage.hv.uri, "pool", spec.name):
            ensure_pool(storage.hv, spec)
        if not storage.observe(spec.name, executor.names.volume(volume.id)).exists:
            raise StorageError(f"volume {volume.id} does not exist in pool {pool.id}")


# What VM work reports as a failed result (with the message).
_ERRORS = (
    HypervisorError,
    DomainMissing,
    DomainNotRunning,
    Unsupported,
    StorageError,
    NetworkDriverError,
    ValueError,
)

HANDLERS: dict[str, Handler[VmPlan]] = {
    "vm.start": Handler(read_plan, start, _ERRORS),
    "vm.stop": Handler(read_plan, stop, _ERRORS),
    "vm.reboot": Handler(read_plan, reboot, _ERRORS),
    "vm.destroy": Handler(read_plan, destroy, _ERRORS),
    "vm.expunge": Handler(read_plan, expunge, _ERRORS),
    "vm.migrate": Handler(read_migration_plan, migrate, _ERRORS),
}
