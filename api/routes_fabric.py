"""Route table of the fabric administration endpoints (admins only).

Each command completes when it is recorded (no Operation), so they answer
202 with operation_id null and a Location of the resource.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from cloud_engine.api.contract_fabric import (
    ClusterCreate,
    HostRegister,
    ImageStoreCreate,
    NoBody,
    PhysicalNetworkCreate,
    PodCreate,
    StoragePoolCreate,
    TemplateRegister,
    ZoneCreate,
)
from cloud_engine.api.routing import CommandRoute, action, create, named
from cloud_engine.engine.commands import Command
from cloud_engine.engine.commands import fabric as f
from cloud_engine.engine.commands import storage as s
from cloud_engine.engine.commands.liveness import DeclareHostAlive
from cloud_engine.engine.commands.maintenance import (
    CancelHostMaintenance,
    CancelStoragePoolMaintenance,
    HostOperation,
    PoolOperation,
)
from cloud_engine.engine.fabric.physical_network import TagRange

ZONE = ("zone", "zone_id")
POD = ("pod", "pod_id")
CLUSTER = ("cluster", "cluster_id")
HOST = ("host", "host_id")


def _toggles(
    resource: str,
    title: str,
    enable: Callable[[UUID], Command],
    disable: Callable[[UUID], Command],
) -> list[CommandRoute[Any]]:
    camel = "".join(p.capitalize() for p in resource.split("_"))
    return [
        action(resource, "enable", f"enable{camel}", f"Enable a {title}", NoBody,
               lambda c: enable(c.id), access="fabric"),
        action(resource, "disable", f"disable{camel}", f"Disable a {title}", NoBody,
               lambda c: disable(c.id), access="fabric"),
    ]  # fmt: skip


FABRIC_ROUTES: list[CommandRoute[Any]] = [
    create("zone", "createZone", "Create a zone", ZoneCreate,
           lambda c: f.CreateZone(name=c.body.name, description=c.body.description,
                                  network_type=c.body.network_type),
           access="fabric"),
    *_toggles("zone", "zone", lambda i: f.EnableZone(zone_id=i),
              lambda i: f.DisableZone(zone_id=i)),
    create("pod", "createPod", "Create a pod in a zone", PodCreate,
           lambda c: f.CreatePod(zone_id=c.body.zone_id, name=c.body.name,
                                 gateway=c.body.gateway, cidr=c.body.cidr),
           access="fabric", refs=named(ZONE)),
    *_toggles("pod", "pod", lambda i: f.EnablePod(pod_id=i), lambda i: f.DisablePod(pod_id=i)),
    create("cluster", "createCluster", "Create a cluster in a pod", ClusterCreate,
           lambda c: f.CreateCluster(zone_id=c.body.zone_id, pod_id=c.body.pod_id,
                                     name=c.body.name, hypervisor=c.body.hypervisor),
           access="fabric", refs=named(ZONE, POD)),
    *_toggles("cluster", "cluster", lambda i: f.EnableCluster(cluster_id=i),
              lambda i: f.DisableCluster(cluster_id=i)),
    create("host", "registerHost", "Register a hypervisor host by its libvirt URI",
           HostRegister,
           lambda c: f.RegisterHost(
               zone_id=c.body.zone_id, pod_id=c.body.pod_id, cluster_id=c.body.cluster_id,
               name=c.body.name, cpu_cores=c.body.cpu_cores, ram_mb=c.body.ram_mb,
               libvirt_uri=c.body.libvirt_uri, cpu_mhz=c.body.cpu_mhz,
               cpu_overcommit=c.body.cpu_overcommit, ram_overcommit=c.body.ram_overcommit,
               tags=c.body.tags, underlay_address=c.body.underlay_address,
               underlay_device=c.body.underlay_device),
           access="fabric", refs=named(ZONE, POD, CLUSTER)),
    *_toggles("host", "host", lambda i: f.EnableHost(host_id=i),
              lambda i: f.DisableHost(host_id=i)),
    action("host", "enter-maintenance", "enterHostMaintenance",
           "Drain a host into maintenance (an operation: its VMs move to other hosts)",
           NoBody, lambda c: HostOperation(kind="host.maintenance", host_id=c.id),
           access="fabric", operation=True),
    action("host", "cancel-maintenance", "cancelHostMaintenance",
           "Stop a drain or leave maintenance: the host is placeable again", NoBody,
           lambda c: CancelHostMaintenance(host_id=c.id), access="fabric"),
    action("host", "exit-maintenance", "exitHostMaintenance", "Take a host out of maintenance",
           NoBody, lambda c: f.ExitHostMaintenance(host_id=c.id), access="fabric"),
    action("host", "declare-up", "declareHostUp",
           "Declare a Suspect or Down host up (its liveness back to Up)", NoBody,
           lambda c: DeclareHostAlive(host_id=c.id), access="fabric"),
    create("storage_pool", "createStoragePool", "Create a primary storage pool",
           StoragePoolCreate,
           lambda c: f.CreateStoragePool(
               zone_id=c.body.zone_id, name=c.body.name, scope=c.body.scope,
               capacity_bytes=c.body.capacity_bytes, url=c.body.url,
               cluster_id=c.body.cluster_id, tags=c.body.tags, overcommit=c.body.overcommit,
               host_id=c.body.host_id),
           access="fabric", refs=named(ZONE, CLUSTER, HOST)),
    *_toggles("storage_pool", "storage pool", lambda i: f.EnableStoragePool(pool_id=i),
              lambda i: f.DisableStoragePool(pool_id=i)),
    action("storage_pool", "enter-maintenance", "enterStoragePoolMaintenance",
           "Drain a storage pool into maintenance (an operation: its volumes move to"
           " another pool of its scope; 409 while one is in use)", NoBody,
           lambda c: PoolOperation(kind="storage_pool.maintenance", pool_id=c.id),
           access="fabric", operation=True),
    action("storage_pool", "cancel-maintenance", "cancelStoragePoolMaintenance",
           "Stop a pool's drain or leave maintenance", NoBody,
           lambda c: CancelStoragePoolMaintenance(pool_id=c.id), access="fabric"),
    action("storage_pool", "exit-maintenance", "exitStoragePoolMaintenance",
           "Take a storage pool out of maintenance", NoBody,
           lambda c: f.ExitStoragePoolMaintenance(pool_id=c.id), access="fabric"),
    create("image_store", "createImageStore", "Create a secondary image store",
           ImageStoreCreate,
           lambda c: f.CreateImageStore(zone_id=c.body.zone_id, name=c.body.name,
                                        url=c.body.url, protocol=c.body.protocol),
           access="fabric", refs=named(ZONE)),
    *_toggles("image_store", "image store", lambda i: f.EnableImageStore(image_store_id=i),
              lambda i: f.DisableImageStore(image_store_id=i)),
    create("physical_network", "createPhysicalNetwork", "Create a physical network",
           PhysicalNetworkCreate,
           lambda c: f.CreatePhysicalNetwork(
               zone_id=c.body.zone_id, name=c.body.name, isolation=c.body.isolation,
               tag_range=None if c.body.tag_range is None
               else TagRange(first=c.body.tag_range.first, last=c.body.tag_range.last)),
           access="fabric", refs=named(ZONE)),
    *_toggles("physical_network", "physical network",
              lambda i: f.EnablePhysicalNetwork(physical_network_id=i),
              lambda i: f.DisablePhysicalNetwork(physical_network_id=i)),
    create("template", "registerTemplate",
           "Register a template or an ISO (download it with /download)",
           TemplateRegister,
           lambda c: s.RegisterTemplate(
               name=c.body.name, zone_id=c.body.zone_id, url=c.body.url, format=c.body.format,
               size_bytes=c.body.size_bytes, os_type=c.body.os_type, checksum=c.body.checksum,
               bootable=c.body.bootable),
           access="catalog", refs=named(ZONE)),
    action("template", "download", "downloadTemplate",
           "Fetch a registered template into the zone's image store", NoBody,
           lambda c: s.RequestTemplateDownload(template_id=c.id), access="catalog"),
    action("template", "deactivate", "deactivateTemplate",
           "Stop offering a template for new VMs", NoBody,
           lambda c: s.DeactivateTemplate(template_id=c.id), access="catalog"),
    action("template", "reactivate", "reactivateTemplate", "Offer a template again", NoBody,
           lambda c: s.ReactivateTemplate(template_id=c.id), access="catalog"),
]  # fmt: skip
