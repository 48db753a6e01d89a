"""VM work: a domain started, stopped, rebooted, destroyed or undefined on
the VM's host, and a leftover domain of a destroyed VM stopped again (the
migration is vm_migrate.py's)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.compute.driver import (
    ComputeDriver,
    DomainMissing,
    DomainNotRunning,
    NoCdromDrive,
)
from cloud_engine.effectors.compute.migration import RunsTwice
from cloud_engine.effectors.compute.seed import SeedError, make_seed
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec, NicSpec
from cloud_engine.effectors.handlers import vm_media, vm_network
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
from cloud_engine.engine.virtual.guest_data import decode_user_data

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
    write_seed(executor, plan)
    vm_media.ensure_iso(executor, plan)
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


def change_media(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    """The running domain's CD-ROM as the VM records it now (an insert and
    an eject alike: a late or repeated item converges on the record)."""
    path = vm_media.ensure_iso(executor, plan)
    outcome = compute(executor, plan).change_media(plan.vm.id, vm_media.cdrom(executor, plan, path))
    return outcome.state.state


def destroy(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    destroyed = compute(executor, plan).destroy(plan.vm.id)
    vm_network.forget(executor, plan, plan.host)
    return destroyed.state.state


def expunge(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    undefined = compute(executor, plan).undefine(plan.vm.id)
    vm_network.forget(executor, plan, plan.host)
    seed = seed_path(executor, plan)
    if seed is not None:
        seed.unlink(missing_ok=True)
    return undefined.state.state


def stop_domain(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    """A Destroyed VM's domain found running again (its destroy's work
    failed or was lost): powered off, as the destroy does; an Expunged
    VM's domain left behind: undefined, as the expunge does. Both are
    no-ops on a domain already gone (a repeated request)."""
    if plan.vm.state == "Expunged":
        return expunge(executor, item, plan)
    return destroy(executor, item, plan)


def seed_path(executor: Executor, plan: VmPlan) -> Path | None:
    """Where the VM's NoCloud seed goes: beside its root disk. None: the VM
    has no user data or keys (or no disk)."""
    vm = plan.vm
    if (vm.user_data is None and not vm.ssh_keys) or not plan.disks:
        return None
    _, pool = plan.disks[0]
    return Path(pool_spec(executor.names, pool).path) / executor.names.seed(vm.id)


def write_seed(executor: Executor, plan: VmPlan) -> None:
    """The VM's seed ISO, made at each start (the same content: the guest
    runs user data once per instance-id, the VM id). The effector writes
    it into the pool's directory, which it shares with the host (the lab's
    and up's pools are directories of this machine)."""
    path = seed_path(executor, plan)
    if path is None:
        return
    vm = plan.vm
    make_seed(
        path,
        instance_id=str(vm.id),
        hostname=_hostname(vm.name),
        user_data=decode_user_data(vm.user_data) if vm.user_data is not None else b"",
        public_keys=vm.ssh_keys,
    )


def _hostname(name: str) -> str | None:
    """The VM's name as a host name (letters, digits, hyphens; 63 at most)."""
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:63].strip("-")
    return cleaned or None


def domain_spec(executor: Executor, plan: VmPlan) -> DomainSpec:
    names = executor.names
    disks = tuple(
        DiskSpec(
            path=str(Path(pool_spec(names, pool).path) / names.volume(volume.id)),
            target=f"vd{chr(ord('a') + (volume.device_id or 0))}",
        )
        for volume, pool in plan.disks
    )
    disks = vm_media.root_first_after_cdrom(
        disks, vm_media.cdrom(executor, plan, vm_media.iso_path(executor, plan))
    )
    seed = seed_path(executor, plan)
    if seed is not None:
        # IDE: the i440fx machine has it, and the guest's ata_piix drives it.
        disks += (DiskSpec(path=str(seed), format="raw", target="hdc", bus="ide", device="cdrom"),)
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
    NoCdromDrive,
    RunsTwice,
    Unsupported,
    StorageError,
    NetworkDriverError,
    VxlanError,
    VxlanConflict,
    SeedError,
    ValueError,
)

HANDLERS: dict[str, Handler[VmPlan]] = {
    "vm.start": Handler(read_plan, start, ERRORS),
    "vm.stop": Handler(read_plan, stop, ERRORS),
    "vm.reboot": Handler(read_plan, reboot, ERRORS),
    "vm.iso_insert": Handler(read_plan, change_media, ERRORS),
    "vm.iso_eject": Handler(read_plan, change_media, ERRORS),
    "vm.destroy": Handler(read_plan, destroy, ERRORS),
    "vm.expunge": Handler(read_plan, expunge, ERRORS),
    "vm.domain_stop": Handler(read_plan, stop_domain, ERRORS),
}
