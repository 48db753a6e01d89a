"""VM work: a domain started, stopped, rebooted, destroyed or undefined on
the VM's host (the migration is vm_migrate.py's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.compute.driver import ComputeDriver, DomainMissing, DomainNotRunning
from cloud_engine.effectors.compute.migration import RunsTwice
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec, NicSpec
from cloud_engine.effectors.handlers import vm_network
from cloud_engine.effectors.handlers.base import Handler, shared
from cloud_engine.effectors.handlers.vm_plan import VmPlan as VmPlan  # tests build plans
from cloud_engine.effectors.handlers.vm_plan import read_plan
from cloud_engine.effectors.host_netns import NetnsError
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import Unsupported, pool_spec
from cloud_engine.effectors.network.driver import NetworkDriverError
from cloud_engine.effectors.network.vxlan import VxlanConflict, VxlanError
from cloud_engine.effectors.storage.pools import StorageError, ensure_pool
from cloud_engine.effectors.storage.volumes import StorageDriver

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor


def compute(executor: Executor, plan: VmPlan) -> ComputeDriver:
    return ComputeDriver(executor.hypervisor(plan.host.libvirt_uri))


def start(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    driver = compute(executor, plan)
    if plan.last_host is not None:
        # It ran elsewhere before: only this host's DHCP may know it now.
        vm_network.forget(executor, plan, plan.last_host, strict=False)
    vm_network.realise(executor, plan)
    _ensure_volumes_exist(executor, plan)
    driver.define(domain_spec(executor, plan))
    executor.fault("after-define")
    return driver.start(plan.vm.id).state.state


def stop(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    stopped = compute(executor, plan).stop(
        plan.vm.id, timeout_s=executor.stop_timeout_s, force=item.forced
    )
    vm_network.forget(executor, plan, plan.host)
    return stopped.state.state


def reboot(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    return compute(executor, plan).reboot(plan.vm.id).state.state


def destroy(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    destroyed = compute(executor, plan).destroy(plan.vm.id)
    vm_network.forget(executor, plan, plan.host)
    return destroyed.state.state


def expunge(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    undefined = compute(executor, plan).undefine(plan.vm.id)
    vm_network.forget(executor, plan, plan.host)
    return undefined.state.state


def domain_spec(executor: Executor, plan: VmPlan) -> DomainSpec:
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


def _ensure_volumes_exist(executor: Executor, plan: VmPlan) -> None:
    storage = StorageDriver(executor.hypervisor(plan.host.libvirt_uri))
    for volume, pool in plan.disks:
        spec = pool_spec(executor.names, pool)
        with shared(storage.hv.uri, "pool", spec.name):
            ensure_pool(storage.hv, spec)
        if not storage.observe(spec.name, executor.names.volume(volume.id)).exists:
            raise StorageError(f"volume {volume.id} does not exist in pool {pool.id}")


# What VM work reports as a failed result (with the message).
ERRORS = (
    HypervisorError,
    NetnsError,
    DomainMissing,
    DomainNotRunning,
    RunsTwice,
    Unsupported,
    StorageError,
    NetworkDriverError,
    VxlanError,
    VxlanConflict,
    ValueError,
)

HANDLERS: dict[str, Handler[VmPlan]] = {
    "vm.start": Handler(read_plan, start, ERRORS),
    "vm.stop": Handler(read_plan, stop, ERRORS),
    "vm.reboot": Handler(read_plan, reboot, ERRORS),
    "vm.destroy": Handler(read_plan, destroy, ERRORS),
    "vm.expunge": Handler(read_plan, expunge, ERRORS),
}
