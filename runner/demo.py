"""The demo fabric `cloud-engine up` creates on first start.

Every command carries an idempotency key, so a second start finds the same
fabric instead of creating another one.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from engine.aggregate import Aggregate
from engine.commands import Command, CommandContext
from engine.commands.fabric import (
    CreateCluster,
    CreatePhysicalNetwork,
    CreatePod,
    CreateStoragePool,
    CreateZone,
    RegisterHost,
)
from engine.commands.network import CreateNetwork, ImplementNetwork
from engine.commands.storage import (
    MarkTemplateDownloaded,
    RegisterTemplate,
    RequestTemplateDownload,
)
from engine.fabric.host import Host
from engine.fabric.physical_network import TagRange
from engine.fabric.pod import Pod
from engine.fabric.storage_pool import StoragePool
from engine.service import CommandService
from engine.store import EventStore
from engine.virtual.network import Network

GiB = 1024**3


class DemoFabric(msgspec.Struct, frozen=True):
    zone: UUID
    pod: UUID
    cluster: UUID
    hosts: tuple[UUID, ...]
    pool: UUID
    physical_network: UUID
    template: UUID
    network: UUID


def _run(service: CommandService, key: str, command: Command) -> UUID:
    context = CommandContext(actor="demo", idempotency_key=f"demo/{key}", request_id=f"demo-{key}")
    return service.execute(command, context, timeout=60).aggregate_id


def ensure_demo_fabric(service: CommandService) -> DemoFabric:
    zone = _run(service, "zone", CreateZone(name="demo-zone", description="created by up"))
    pod = _run(
        service,
        "pod",
        CreatePod(zone_id=zone, name="pod-1", gateway="10.0.0.1", cidr="10.0.0.0/24"),
    )
    cluster = _run(service, "cluster", CreateCluster(zone_id=zone, pod_id=pod, name="cluster-1"))
    hosts = tuple(
        _run(
            service,
            f"host-{n}",
            RegisterHost(
                zone_id=zone,
                pod_id=pod,
                cluster_id=cluster,
                name=f"host-{n}",
                cpu_cores=16,
                ram_mb=65536,
                libvirt_uri="test:///default",
                cpu_overcommit=4.0,
                ram_overcommit=1.5,
            ),
        )
        for n in (1, 2)
    )
    pool = _run(
        service,
        "pool",
        CreateStoragePool(
            zone_id=zone,
            cluster_id=cluster,
            name="primary-1",
            scope="cluster",
            capacity_bytes=2048 * GiB,
            url="file:///var/lib/cloud-engine/primary-1",
        ),
    )
    physical = _run(
        service,
        "physical-network",
        CreatePhysicalNetwork(
            zone_id=zone,
            name="guest",
            isolation="VXLAN",
            tag_range=TagRange(first=5000, last=5999),
        ),
    )
    template = _run(
        service,
        "template",
        RegisterTemplate(
            name="tiny-linux",
            zone_id=zone,
            url="http://127.0.0.1:8080/templates/tiny-linux.qcow2",
            format="qcow2",
            size_bytes=64 * 1024**2,
            os_type="linux",
        ),
    )
    _run(service, "template-download", RequestTemplateDownload(template_id=template))
    _run(service, "template-ready", MarkTemplateDownloaded(template_id=template))
    network = _run(
        service,
        "network",
        CreateNetwork(
            account="demo",
            name="demo-net",
            zone_id=zone,
            cidr="10.1.0.0/24",
            isolation="none",
            physical_network_id=physical,
        ),
    )
    _run(service, "network-implement", ImplementNetwork(network_id=network))
    return DemoFabric(zone, pod, cluster, hosts, pool, physical, template, network)


def describe(store: EventStore, fabric: DemoFabric) -> list[str]:
    ids = [fabric.zone, fabric.pod, fabric.cluster, *fabric.hosts, fabric.pool]
    ids += [fabric.physical_network, fabric.template, fabric.network]
    loaded = store.load_many(ids)
    return [_line(loaded[i]) for i in ids if i in loaded]


def _line(aggregate: Aggregate) -> str:
    name = getattr(aggregate, "name", "")
    detail = ""
    if isinstance(aggregate, Host):
        detail = (
            f"vCPU {aggregate.cpus_used}/{aggregate.cpus_total:g}"
            f"  RAM {aggregate.ram_used_mb}/{aggregate.ram_total_mb} MiB"
        )
    elif isinstance(aggregate, StoragePool):
        detail = f"{aggregate.used_bytes // GiB}/{aggregate.total_bytes // GiB} GiB used"
    elif isinstance(aggregate, Network | Pod):
        detail = f"{aggregate.cidr} gw {aggregate.gateway}"
    return (
        f"{type(aggregate).__name__:<16} {name:<14} {aggregate.id}  "
        f"{aggregate.state:<12} v{aggregate.version}  {detail}".rstrip()
    )
