"""Request bodies of the tenant endpoints: VMs, volumes, networks, NICs, IP
addresses and network rules.

`account` is optional everywhere: a user's token decides it (naming another
account is refused with 403), an admin may create resources for any
account. Translated into engine commands in api/routes_tenant.py.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

import msgspec

from cloud_engine.api.contract_fabric import Body
from cloud_engine.api.fields import (
    Account,
    Address,
    Cidr,
    Cpus,
    DeviceId,
    DiskGb,
    Mac,
    Name,
    Port,
    RamMb,
    Tag,
)
from cloud_engine.engine.virtual.network import Isolation, Purpose
from cloud_engine.engine.virtual.network_rule import Protocol, RuleKind
from cloud_engine.engine.virtual.snapshot import SnapshotKind


class ComputeSpec(Body, frozen=True, kw_only=True):
    cpus: Cpus
    ram_mb: RamMb
    root_disk_gb: DiskGb
    # Host tags the VM needs (a host must carry every one).
    tags: Annotated[tuple[Tag, ...], msgspec.Meta(max_length=32)] = ()


class VmDeploy(Body, frozen=True, kw_only=True):
    name: Name
    zone_id: UUID
    template_id: UUID
    spec: ComputeSpec
    network_ids: Annotated[tuple[UUID, ...], msgspec.Meta(max_length=16)] = ()
    data_disks_gb: Annotated[tuple[DiskGb, ...], msgspec.Meta(max_length=15)] = ()
    affinity_group: Name | None = None
    affinity: Literal["anti-affinity", "affinity"] = "anti-affinity"
    affinity_strict: bool = True
    strategy: Literal["first-fit", "dispersing"] = "first-fit"
    # Administrators only: deploy on this host (the planner still checks it).
    host_id: UUID | None = None
    account: Account | None = None
    # Restarted elsewhere if its host dies, highest priority first.
    ha: bool = False
    ha_priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    # The guest's first boot (a cloud-init NoCloud seed on a CD-ROM):
    # base64 user data (a #! script or #cloud-config, at most 32 KiB
    # decoded) and OpenSSH public keys. The engine checks them (422 naming
    # the field); shown back to the VM's owner and admins only.
    user_data: str | None = None
    ssh_keys: Annotated[tuple[str, ...], msgspec.Meta(max_length=16)] = ()


class VmHa(Body, frozen=True, kw_only=True):
    ha: bool
    ha_priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0


class VmStart(Body, frozen=True, kw_only=True):
    # Administrators only: start on this host.
    host_id: UUID | None = None


class VmStop(Body, frozen=True, kw_only=True):
    # Power off instead of asking the guest to shut down.
    forced: bool = False


class VolumeCreate(Body, frozen=True, kw_only=True):
    name: Name
    zone_id: UUID
    size_gb: DiskGb
    template_id: UUID | None = None
    account: Account | None = None


class NetworkCreate(Body, frozen=True, kw_only=True):
    name: Name
    zone_id: UUID
    cidr: Cidr
    isolation: Isolation
    gateway: Address | None = None
    # Left out for an isolated network: the zone's oldest enabled physical
    # network with the same isolation.
    physical_network_id: UUID | None = None
    account: Account | None = None
    # Admins only: "public", the zone's public network, whose addresses are
    # public IPs (POST /v1/ip-addresses on it), with isolation none;
    # "shared", a network every account's VMs may join.
    purpose: Purpose | None = None
    # An isolated network's way out: it gets a virtual router with a public
    # IP of this public network for source NAT. Left out: the zone's public
    # network, if it has one (then every new isolated network has egress).
    public_network_id: UUID | None = None


class NicCreate(Body, frozen=True, kw_only=True):
    vm_id: UUID
    network_id: UUID
    device_id: DeviceId
    ip_address_id: UUID | None = None
    mac: Mac | None = None


class IpAddressAllocate(Body, frozen=True, kw_only=True):
    network_id: UUID
    # A specific free address of the network; left out, the next free one.
    address: Address | None = None
    # The resource (a VM, say) the address is for.
    owner_id: UUID | None = None
    # On a public network: the account the public IP is for (left out: the
    # caller's; admins may name another).
    account: Account | None = None


class NetworkRuleCreate(Body, frozen=True, kw_only=True):
    network_id: UUID
    kind: RuleKind
    protocol: Protocol = "all"
    source_cidr: Cidr | None = None
    start_port: Port | None = None
    end_port: Port | None = None
    public_ip_address_id: UUID | None = None
    private_ip: Address | None = None
    # Port forwarding: where the public ports go on the VM (the same number
    # of ports; private_end_port may be left out).
    private_port: Port | None = None
    private_end_port: Port | None = None


class VmMigrate(Body, frozen=True, kw_only=True):
    # The host to move to; left out, the planner picks one (not the current).
    host_id: UUID | None = None


class VmScale(Body, frozen=True, kw_only=True):
    # The new size of a stopped VM; a field left out keeps its value.
    cpus: Cpus | None = None
    ram_mb: RamMb | None = None


class VmAttachIso(Body, frozen=True, kw_only=True):
    # An ISO template (format iso, Ready, in the VM's zone) for its CD-ROM.
    iso_id: UUID


class VolumeMigrate(Body, frozen=True, kw_only=True):
    # The pool to move to: in the volume's zone, reached by its VM's host.
    pool_id: UUID


class VolumeAttach(Body, frozen=True, kw_only=True):
    vm_id: UUID


class VolumeResize(Body, frozen=True, kw_only=True):
    size_gb: DiskGb


class VolumeSnapshot(Body, frozen=True, kw_only=True):
    name: Name = "snapshot"
    kind: SnapshotKind = "internal"


class VolumeRevert(Body, frozen=True, kw_only=True):
    snapshot_id: UUID
