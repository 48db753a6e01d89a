"""Request bodies of the fabric endpoints (administrators only).

These Structs are the public contract: their names and fields are what the
OpenAPI document shows. They are translated into engine commands in
api/routes_fabric.py, so the engine may rename its commands without
breaking clients.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from cloud_engine.api.fields import (
    Bytes,
    Description,
    HostCores,
    HostRamMb,
    Mhz,
    Name,
    NetworkTag,
    Overcommit,
    Tags,
    Url,
)
from cloud_engine.engine.fabric.cluster import Hypervisor
from cloud_engine.engine.fabric.image_store import ImageStoreProtocol
from cloud_engine.engine.fabric.physical_network import Isolation
from cloud_engine.engine.fabric.storage_pool import StorageScope
from cloud_engine.engine.fabric.zone import NetworkType
from cloud_engine.engine.virtual.template import TemplateFormat


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every request body refuses fields it does not know: a typo is an
    error, not a silently ignored setting."""


class NoBody(Body, frozen=True, kw_only=True):
    """Actions that take no parameters accept an empty body or {}."""


class ZoneCreate(Body, frozen=True, kw_only=True):
    name: Name
    description: Description = ""
    network_type: NetworkType = "Advanced"


class PodCreate(Body, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    gateway: Name
    cidr: Name


class ClusterCreate(Body, frozen=True, kw_only=True):
    zone_id: UUID
    pod_id: UUID
    name: Name
    hypervisor: Hypervisor = "kvm"


class HostRegister(Body, frozen=True, kw_only=True):
    zone_id: UUID
    pod_id: UUID
    cluster_id: UUID
    name: Name
    cpu_cores: HostCores
    ram_mb: HostRamMb
    # qemu+ssh://host/system, qemu+tls://host/system, test:///default, ...
    libvirt_uri: Url
    cpu_mhz: Mhz | None = None
    cpu_overcommit: Overcommit = 1.0
    ram_overcommit: Overcommit = 1.0
    tags: Tags = ()
    # The address other hosts reach it at (live migration's stream, VXLAN
    # tunnels) and the device it is on; both or neither.
    underlay_address: Name | None = None
    underlay_device: Name | None = None


class StoragePoolCreate(Body, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    scope: StorageScope
    capacity_bytes: Bytes
    url: Url
    cluster_id: UUID | None = None
    tags: Tags = ()
    overcommit: Overcommit = 1.0
    # Scope "host": the host whose local storage it is (its cluster is the host's).
    host_id: UUID | None = None


class ImageStoreCreate(Body, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    url: Url
    protocol: ImageStoreProtocol


class TagRange(Body, frozen=True, kw_only=True):
    first: NetworkTag
    last: NetworkTag


class PhysicalNetworkCreate(Body, frozen=True, kw_only=True):
    zone_id: UUID
    name: Name
    isolation: Isolation
    tag_range: TagRange | None = None


class TemplateRegister(Body, frozen=True, kw_only=True):
    name: Name
    zone_id: UUID
    url: Url
    format: TemplateFormat
    size_bytes: Bytes
    os_type: Name
    checksum: Name | None = None
    # format iso: whether a VM may boot from it (deploy from it, CD-ROM
    # first); disk images are always bootable.
    bootable: bool = True
