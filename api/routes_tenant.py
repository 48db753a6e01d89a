"""Route table of the tenant endpoints: VMs, volumes, networks, NICs, IP
addresses and network rules.

VM deploy, lifecycle and migration and the volume operations (attach,
detach, resize, snapshot, revert) start an Operation (202, Location
/v1/operations/{id}); the others complete when recorded. A new engine
operation is one entry here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cloud_engine.api.auth import admin_only_field
from cloud_engine.api.context import ApiContext
from cloud_engine.api.contract_fabric import NoBody
from cloud_engine.api.contract_tenant import (
    IpAddressAllocate,
    NetworkCreate,
    NetworkRuleCreate,
    NicCreate,
    VmAttachIso,
    VmDeploy,
    VmHa,
    VmMigrate,
    VmScale,
    VmStart,
    VmStop,
    VolumeAttach,
    VolumeCreate,
    VolumeMigrate,
    VolumeResize,
    VolumeRevert,
    VolumeSnapshot,
)
from cloud_engine.api.problems import ApiError
from cloud_engine.api.queries import first_physical_network, public_network_of
from cloud_engine.api.routing import Call, CommandRoute, Ref, action, create, named
from cloud_engine.engine.commands import network as n
from cloud_engine.engine.commands.compute import GIB
from cloud_engine.engine.commands.liveness import UpdateVmHa
from cloud_engine.engine.commands.operations import (
    DeployVm,
    VmOperation,
    VmOperationKind,
    VolumeOperation,
)
from cloud_engine.engine.commands.storage import CreateVolume
from cloud_engine.engine.virtual.vm import VmSpec


def _deploy(c: Call[VmDeploy]) -> DeployVm:
    b = c.body
    admin_only_field(c.principal, "host_id", b.host_id)
    return DeployVm(
        account=c.account,
        name=b.name,
        zone_id=b.zone_id,
        template_id=b.template_id,
        spec=VmSpec(
            cpus=b.spec.cpus, ram_mb=b.spec.ram_mb, root_disk_gb=b.spec.root_disk_gb,
            tags=b.spec.tags,
        ),
        network_ids=b.network_ids,
        data_disks_gb=b.data_disks_gb,
        affinity_group=b.affinity_group,
        affinity=b.affinity,
        affinity_strict=b.affinity_strict,
        host_id=b.host_id,
        strategy=b.strategy,
        ha=b.ha,
        ha_priority=b.ha_priority,
        user_data=b.user_data,
        ssh_keys=b.ssh_keys,
    )  # fmt: skip


def _start(c: Call[VmStart]) -> VmOperation:
    admin_only_field(c.principal, "host_id", c.body.host_id)
    return VmOperation(kind="vm.start", vm_id=c.id, host_id=c.body.host_id)


def _vm_operation(kind: VmOperationKind, summary: str) -> CommandRoute[NoBody]:
    verb = kind.removeprefix("vm.")
    return action("vm", verb, f"{verb}Vm", summary, NoBody,
                  lambda c: VmOperation(kind=kind, vm_id=c.id), operation=True)  # fmt: skip


async def _network_defaults(c: Call[NetworkCreate], ctx: ApiContext) -> NetworkCreate:
    b = c.body
    admin_only_field(c.principal, "purpose", b.purpose)
    if b.purpose in (None, "isolated") and b.public_network_id is None:
        found_public = await public_network_of(ctx.pool, ctx.schema, b.zone_id)
        if found_public is not None:
            b = msgspec.structs.replace(b, public_network_id=found_public)
    return await _physical_network(b, ctx)


async def _physical_network(b: NetworkCreate, ctx: ApiContext) -> NetworkCreate:
    if b.physical_network_id is not None or b.isolation == "none":
        return b
    found = await first_physical_network(ctx.pool, ctx.schema, b.zone_id, b.isolation)
    if found is None:
        raise ApiError(
            422,
            "validation",
            f"zone {b.zone_id} has no enabled {b.isolation} physical network",
            field="physical_network_id",
        )
    return msgspec.structs.replace(b, physical_network_id=found)


async def _public_ip_account(c: Call[IpAddressAllocate], ctx: ApiContext) -> IpAddressAllocate:
    # On a public network the address is the caller's account's (an
    # admin's may name another); elsewhere it is the network's.
    network = await ctx.owners.of(c.body.network_id)
    if network is None or not network.public:
        return c.body  # the engine refuses any account but the network's
    return msgspec.structs.replace(c.body, account=c.account)


def _allocate_ip(c: Call[IpAddressAllocate]) -> n.AllocateIp:
    return n.AllocateIp(network_id=c.body.network_id, owner_id=c.body.owner_id,
                        address=c.body.address, account=c.body.account)  # fmt: skip


ZONE = ("zone", "zone_id")
TEMPLATE = ("template", "template_id")


def _deploy_refs(c: Call[VmDeploy]) -> list[Ref]:
    # Before the lookups: a user naming a host learns nothing about it.
    admin_only_field(c.principal, "host_id", c.body.host_id)
    networks = [
        Ref("network", i, f"network_ids[{k}]", purposes=("shared",))
        for k, i in enumerate(c.body.network_ids)
    ]
    return [*named(ZONE, TEMPLATE, ("host", "host_id"))(c), *networks]


def _nic_refs(c: Call[NicCreate]) -> list[Ref]:
    refs = [
        Ref("vm", c.body.vm_id, "vm_id"),
        Ref("network", c.body.network_id, "network_id", purposes=("shared",)),
    ]
    if c.body.ip_address_id is not None:
        refs.append(Ref("ip_address", c.body.ip_address_id, "ip_address_id"))
    return refs


def _ip_refs(c: Call[IpAddressAllocate]) -> list[Ref]:
    # Anyone may take a public IP from a public network.
    refs = [Ref("network", c.body.network_id, "network_id", purposes=("public",))]
    if c.body.owner_id is not None:
        refs.append(Ref(None, c.body.owner_id, "owner_id"))
    return refs


def _network_refs(c: Call[NetworkCreate]) -> list[Ref]:
    refs = named(ZONE, ("physical_network", "physical_network_id"))(c)
    if c.body.public_network_id is not None:
        refs.append(
            Ref("network", c.body.public_network_id, "public_network_id", purposes=("public",))
        )
    return list(refs)


def _rule_refs(c: Call[NetworkRuleCreate]) -> list[Ref]:
    refs = [Ref("network", c.body.network_id, "network_id")]
    if c.body.public_ip_address_id is not None:
        refs.append(Ref("ip_address", c.body.public_ip_address_id, "public_ip_address_id"))
    return refs


TENANT_ROUTES: list[CommandRoute[Any]] = [
    create("vm", "deployVm", "Deploy a VM (an operation: place, provision, start)", VmDeploy,
           _deploy, operation=True, refs=_deploy_refs),
    action("vm", "start", "startVm", "Start a stopped VM", VmStart, _start, operation=True),
    action("vm", "stop", "stopVm", "Stop a running VM", VmStop,
           lambda c: VmOperation(kind="vm.stop", vm_id=c.id, forced=c.body.forced),
           operation=True),
    _vm_operation("vm.reboot", "Reboot a running VM"),
    _vm_operation("vm.destroy", "Destroy a VM (recoverable until expunged)"),
    _vm_operation("vm.recover", "Recover a destroyed VM (it comes back stopped)"),
    _vm_operation("vm.expunge", "Expunge a destroyed VM and its volumes for good"),
    action("vm", "ha", "updateVmHa", "Set whether a VM is restarted when its host dies",
           VmHa, lambda c: UpdateVmHa(vm_id=c.id, ha=c.body.ha, ha_priority=c.body.ha_priority)),
    action("vm", "migrate", "migrateVm",
           "Move a VM to another host (live, or stopped with its disks)", VmMigrate,
           lambda c: VmOperation(kind="vm.migrate", vm_id=c.id, host_id=c.body.host_id),
           access="fabric", operation=True, refs=named(("host", "host_id"))),
    action("vm", "scale", "scaleVm", "Change a stopped VM's vCPUs and RAM", VmScale,
           lambda c: VmOperation(kind="vm.scale", vm_id=c.id, cpus=c.body.cpus,
                                 ram_mb=c.body.ram_mb),
           operation=True),
    action("vm", "attach-iso", "attachIso",
           "Insert an ISO in a VM's CD-ROM drive (a running VM's live)", VmAttachIso,
           lambda c: VmOperation(kind="vm.attach_iso", vm_id=c.id, iso_id=c.body.iso_id),
           operation=True, refs=named(("template", "iso_id"))),
    action("vm", "detach-iso", "detachIso", "Empty a VM's CD-ROM drive", NoBody,
           lambda c: VmOperation(kind="vm.detach_iso", vm_id=c.id), operation=True),
    create("volume", "createVolume", "Create a data volume", VolumeCreate,
           lambda c: CreateVolume(account=c.account, name=c.body.name, zone_id=c.body.zone_id,
                                  size_bytes=c.body.size_gb * GIB, kind="data",
                                  template_id=c.body.template_id),
           refs=named(ZONE, TEMPLATE)),
    action("volume", "attach", "attachVolume", "Attach a volume to a stopped VM", VolumeAttach,
           lambda c: VolumeOperation(kind="volume.attach", volume_id=c.id, vm_id=c.body.vm_id),
           operation=True, refs=named(("vm", "vm_id"))),
    action("volume", "detach", "detachVolume", "Detach a volume from its stopped VM", NoBody,
           lambda c: VolumeOperation(kind="volume.detach", volume_id=c.id), operation=True),
    action("volume", "resize", "resizeVolume", "Grow a volume", VolumeResize,
           lambda c: VolumeOperation(kind="volume.resize", volume_id=c.id,
                                     new_size_bytes=c.body.size_gb * GIB),
           operation=True),
    action("volume", "snapshot", "snapshotVolume",
           "Snapshot a volume (find it at /v1/snapshots?volume_id=)", VolumeSnapshot,
           lambda c: VolumeOperation(kind="volume.snapshot", volume_id=c.id,
                                     snapshot_name=c.body.name, snapshot_kind=c.body.kind),
           operation=True),
    action("volume", "revert", "revertVolume", "Revert a volume to one of its snapshots",
           VolumeRevert,
           lambda c: VolumeOperation(kind="volume.revert", volume_id=c.id,
                                     snapshot_id=c.body.snapshot_id),
           operation=True, refs=named(("snapshot", "snapshot_id"))),
    action("volume", "migrate", "migrateVolume",
           "Move a detached volume or a stopped VM's volume to another pool", VolumeMigrate,
           lambda c: VolumeOperation(kind="volume.migrate", volume_id=c.id,
                                     pool_id=c.body.pool_id),
           access="fabric", operation=True, refs=named(("storage_pool", "pool_id"))),
    create("network", "createNetwork", "Create a guest network", NetworkCreate,
           lambda c: n.CreateNetwork(account=c.account, name=c.body.name,
                                     zone_id=c.body.zone_id, cidr=c.body.cidr,
                                     gateway=c.body.gateway, isolation=c.body.isolation,
                                     physical_network_id=c.body.physical_network_id,
                                     purpose=c.body.purpose or "isolated",
                                     public_network_id=c.body.public_network_id),
           refs=_network_refs, resolve=_network_defaults),
    action("network", "destroy", "destroyNetwork",
           "Destroy a network that holds no addresses and no tag", NoBody,
           lambda c: n.DestroyNetwork(network_id=c.id)),
    create("nic", "createNic", "Add a NIC to a VM", NicCreate,
           lambda c: n.CreateNic(vm_id=c.body.vm_id, network_id=c.body.network_id,
                                 device_id=c.body.device_id, ip_id=c.body.ip_address_id,
                                 # The contract takes either case; the engine, lower.
                                 mac=None if c.body.mac is None else c.body.mac.lower()),
           refs=_nic_refs),
    action("nic", "release", "releaseNic", "Release an unplugged NIC", NoBody,
           lambda c: n.ReleaseNic(nic_id=c.id)),
    create("ip_address", "allocateIpAddress",
           "Allocate an IP address on a network (on a public network: a public IP)",
           IpAddressAllocate, _allocate_ip, refs=_ip_refs, resolve=_public_ip_account),
    action("ip_address", "release", "releaseIpAddress", "Give an IP address back", NoBody,
           lambda c: n.ReleaseIp(ip_id=c.id)),
    create("network_rule", "createNetworkRule",
           "Create a firewall, port forwarding or static NAT rule", NetworkRuleCreate,
           lambda c: n.CreateNetworkRule(
               network_id=c.body.network_id, kind=c.body.kind, protocol=c.body.protocol,
               source_cidr=c.body.source_cidr, start_port=c.body.start_port,
               end_port=c.body.end_port, public_ip_id=c.body.public_ip_address_id,
               private_ip=c.body.private_ip, private_port=c.body.private_port,
               private_end_port=c.body.private_end_port),
           refs=_rule_refs),
    action("network_rule", "revoke", "revokeNetworkRule", "Revoke a network rule", NoBody,
           lambda c: n.RevokeNetworkRule(rule_id=c.id)),
]  # fmt: skip
