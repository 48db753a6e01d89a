"""What tests that drive the command service deploy onto: a template, and
a small cluster of test-driver hosts with one pool."""

from __future__ import annotations

from uuid import UUID

import msgspec

from cloud_engine.engine.commands.fabric import CreateCluster, CreatePod, CreateZone
from cloud_engine.engine.commands.hosts import RegisterHost
from cloud_engine.engine.commands.storage import (
    MarkTemplateDownloaded,
    RegisterTemplate,
    RequestTemplateDownload,
)
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.service import CommandService


def register_template(service: CommandService, zone: UUID) -> UUID:
    """A 1 MiB qcow2 template in zone, Registered (not downloaded)."""
    return service.execute(
        RegisterTemplate(
            name="t",
            zone_id=zone,
            url="http://127.0.0.1/t.qcow2",
            format="qcow2",
            size_bytes=1 << 20,
            os_type="None",
        )
    ).aggregate_id


def ready_template(service: CommandService, zone: UUID) -> UUID:
    """A template in zone that VMs can be deployed from (Ready, as if the
    effector had downloaded it)."""
    template = register_template(service, zone)
    service.execute(RequestTemplateDownload(template_id=template))
    service.execute(MarkTemplateDownloaded(template_id=template))
    return template


class SmallCluster(msgspec.Struct, frozen=True):
    zone: UUID
    hosts: tuple[UUID, ...]
    pool: UUID


def small_cluster(
    service: CommandService, *, cpu_cores: int, pool_bytes: int, hosts: int = 2
) -> SmallCluster:
    """One zone, pod and cluster: hosts on test:///default with 4 GiB of RAM
    each, one cluster-scoped pool."""
    run = service.execute
    zone = run(CreateZone(name="z")).aggregate_id
    pod = run(CreatePod(zone_id=zone, name="p", gateway="10.0.0.1", cidr="10.0.0.0/24"))
    cluster = run(CreateCluster(zone_id=zone, pod_id=pod.aggregate_id, name="c"))
    host_ids = tuple(
        run(
            RegisterHost(
                zone_id=zone,
                pod_id=pod.aggregate_id,
                cluster_id=cluster.aggregate_id,
                name=f"h{i}",
                cpu_cores=cpu_cores,
                ram_mb=4096,
                libvirt_uri="test:///default",
            )
        ).aggregate_id
        for i in range(hosts)
    )
    pool = run(
        CreateStoragePool(
            zone_id=zone,
            cluster_id=cluster.aggregate_id,
            name="p",
            scope="cluster",
            capacity_bytes=pool_bytes,
            url="/var/lib/cloud-engine/pool",
        )
    ).aggregate_id
    return SmallCluster(zone, host_ids, pool)
