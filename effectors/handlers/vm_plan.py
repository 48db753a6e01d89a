"""What VM work reads before it acts: the VM, its host, its disks and NICs,
and (for a migration) the host it moves to, from the read models."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from uuid import UUID

import msgspec
import structlog

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.desired import (
    HostView,
    NetworkView,
    NicView,
    PoolView,
    VmView,
    VolumeView,
)
from cloud_engine.effectors.handlers import template
from cloud_engine.effectors.handlers.base import Reads
from cloud_engine.effectors.handlers.template import TemplateSource
from cloud_engine.effectors.vm_rows import VmRows

log = structlog.get_logger("effectors.handlers.vm")

# The states in which the log has a VM's guest run, or about to.
_TO_RUN = frozenset({"Starting", "Running", "Stopping", "Migrating"})
# The VM's states, by work kind, in which a work item asks for what no
# longer holds: the log moved on while it waited (a backlog, the effector
# down), and acting now would change what runs behind the record.
SUPERSEDED: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # The start failed or timed out, and the VM was stopped, destroyed
        # or expunged since.
        "vm.start": frozenset(
            {"Stopping", "Stopped", "Destroyed", "Expunging", "Expunged", "Error"}
        ),
        # The stop failed or timed out, and the VM was recorded running
        # since (convergence found its domain running) or started again:
        # a late stop would power off a guest the log says runs.
        "vm.stop": frozenset({"Allocated", "Starting", "Running", "Migrating", "Error"}),
        # Recovered and started (or moving) since its destroy: its guest is
        # to run. Recovered only (Stopped), powering off agrees with the log.
        "vm.destroy": _TO_RUN,
        # A leftover domain to stop: likewise.
        "vm.domain_stop": _TO_RUN,
    }
)


class VmPlan(msgspec.Struct, frozen=True):
    """Everything a VM's domain needs, read from the read models."""

    vm: VmView
    host: HostView
    disks: tuple[tuple[VolumeView, PoolView], ...] = ()
    nics: tuple[tuple[NicView, NetworkView], ...] = ()
    destination: HostView | None = None  # vm.migrate: the target host
    # The zone's hosts, when a NIC is on a VXLAN network: their underlay
    # addresses are its tunnels' peers.
    zone_hosts: tuple[HostView, ...] = ()
    # Where the VM ran before, if elsewhere (a start: its DHCP forgets it).
    last_host: HostView | None = None
    # An offline migration: each disk that moves, with the pool it goes to.
    moves: tuple[tuple[VolumeView, PoolView], ...] = ()
    # The ISO template in its CD-ROM drive, and the store it is fetched into.
    iso: TemplateSource | None = None

    @property
    def host_id(self) -> UUID:
        return self.host.id

    def on(self, host: HostView) -> VmPlan:
        """The same VM as seen on another host (a migration's target)."""
        return msgspec.structs.replace(self, host=host, destination=None)


async def read_plan(reads: Reads, item: WorkItem) -> VmPlan | None:
    # One query for the VM and what it holds; the reads below are answered
    # from its rows (anything else still goes to the database).
    models = await VmRows.read(reads.models, item.aggregate_id, item.version)
    reads = Reads(models, reads.zones)
    vm = models.vm()
    if vm is None or not reads.serves(vm.zone_id):
        return None
    if vm.state in SUPERSEDED.get(item.kind, ()):
        # Nothing waits for it: a start or stop's operation ended at its
        # step's deadline or failure; a destroy is done as it is recorded.
        log.warning(
            "vm_work_superseded", vm_id=str(vm.id), kind=item.kind, state=vm.state,
            version=item.version, now=vm.version,
        )  # fmt: skip
        return None
    # A destroyed or expunging VM has left its host; its domain is still
    # there, as it is for a stopped VM migrating (it holds its destination).
    host_id = vm.last_host_id if vm.migrating_stopped else vm.host_id or vm.last_host_id
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
    zone_hosts: list[HostView] = []
    if any(network.isolation.lower() == "vxlan" for _, network in nics):
        zone_hosts = await models.where(HostView, "host", "zone_id", vm.zone_id)
    last_host = None
    if vm.host_id is not None and vm.last_host_id not in (None, vm.host_id, host_id):
        assert vm.last_host_id is not None
        last_host = await models.get(HostView, "host", vm.last_host_id)
    iso = None if vm.iso_id is None else await template.source(reads, vm.iso_id, 0)
    return VmPlan(
        vm=vm,
        host=host,
        disks=tuple(disks),
        nics=tuple(nics),
        zone_hosts=tuple(zone_hosts),
        last_host=last_host,
        iso=iso,
    )


async def read_migration_plan(reads: Reads, item: WorkItem) -> VmPlan | None:
    """The VM's plan and the host it moves to."""
    found = await read_plan(reads, item)
    if found is None or found.vm.migration_target_id is None:
        return found
    target = await reads.models.get(HostView, "host", found.vm.migration_target_id)
    moves = []
    for disk, pool in found.disks:
        volume: VolumeView | None = disk
        if found.vm.migrating_stopped and not pool.shared and disk.moving_to is None:
            # Its move was recorded with the VM's request: the row lags.
            volume = await reads.models.get(VolumeView, "volume", disk.id, disk.version + 1)
        if volume is not None and volume.moving_to is not None:
            to = await reads.models.get(PoolView, "storage_pool", volume.moving_to)
            if to is not None:
                moves.append((volume, to))
    return msgspec.structs.replace(found, destination=target, moves=tuple(moves))


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
