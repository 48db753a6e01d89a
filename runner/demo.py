"""The demo fabric `cloud-engine up` creates on first start.

Every command carries an idempotency key, so a second start finds the same
fabric instead of creating another one.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import msgspec

from api import tokens
from bus.pg import connect
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
from engine.commands.storage import RegisterTemplate, RequestTemplateDownload
from engine.commands.storage_fabric import CreateImageStore
from engine.database import DatabaseTarget
from engine.fabric.host import Host
from engine.fabric.physical_network import TagRange
from engine.fabric.pod import Pod
from engine.fabric.storage_pool import StoragePool
from engine.service import CommandService
from engine.store import EventStore
from engine.virtual.network import Network
from engine.virtual.template import Template
from runner.demo_images import IMAGE, IMAGE_SIZE, ImageServer, ensure_image

GiB = 1024**3
# A fixed id: a later start finds the template (and the URL it was given).
DEMO_TEMPLATE = UUID("5d1c7a52-0b0e-4c1f-9f5e-7d3a2c1b0a01")


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


def ensure_demo_fabric(
    service: CommandService, store: EventStore, data_dir: Path
) -> tuple[DemoFabric, ImageServer | None]:
    """The demo fabric, and the server of its template's image while the
    effector still has to fetch it (close it when done)."""
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
    images = data_dir / "images"
    _run(
        service,
        "image-store",
        CreateImageStore(zone_id=zone, name="images-1", url=str(images), protocol="file"),
    )
    template, server = _ensure_template(service, store, zone, data_dir / "demo-templates")
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
    return DemoFabric(zone, pod, cluster, hosts, pool, physical, template, network), server


def _ensure_template(
    service: CommandService, store: EventStore, zone: UUID, root: Path
) -> tuple[UUID, ImageServer | None]:
    """Registered with the URL of the image server (on the port it was first
    given), its download requested; the server runs until it is Ready."""
    existing = store.load(DEMO_TEMPLATE)
    if isinstance(existing, Template) and existing.state == "Ready":
        return DEMO_TEMPLATE, None
    _, digest = ensure_image(root)
    port = urlsplit(existing.url).port or 0 if isinstance(existing, Template) else 0
    server = ImageServer(root, port)
    try:
        register = RegisterTemplate(
            id=DEMO_TEMPLATE,
            name="tiny-linux",
            zone_id=zone,
            url=existing.url if isinstance(existing, Template) else server.url(IMAGE),
            format="qcow2",
            size_bytes=IMAGE_SIZE,
            os_type="linux",
            checksum=f"sha256:{digest}",
        )
        _run(service, "template-v2", register)
        _run(service, "template-v2-download", RequestTemplateDownload(template_id=DEMO_TEMPLATE))
    except BaseException:
        server.close()
        raise
    return DEMO_TEMPLATE, server


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


async def admin_token(target: DatabaseTarget, data_dir: Path) -> str:
    """The admin token `up` prints: made once, its secret kept (mode 0600) in
    the data directory so every start prints the same one."""
    path = data_dir / "admin-token"
    conn = await connect(target)
    try:
        if path.exists():
            secret = path.read_text().strip()
            await tokens.prepare(conn, target.schema)
            found = await conn.fetchval(
                f"SELECT 1 FROM {tokens.table(target.schema)} WHERE secret_sha256 = $1",
                tokens.digest(secret),
            )
            if found:
                return secret
        secret, _ = await tokens.create(conn, target.schema, "admin", "admin")
    finally:
        await conn.close()
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret
