"""The demo fabric `cloud-engine up` creates on first start.

Every command carries an idempotency key, so a second start finds the same
fabric instead of creating another one.

The demo hosts are lab hosts (runner/up_hosts.py chooses): each its own
libvirtd on this machine, registered with its URI and underlay address,
with one primary pool on the lab's shared directory, which every host sees
at the same path, and a local pool each. Or they
are libvirt test drivers, each started from a node file of its own in the
data directory (demo_host_uri), so neither reports the other's domains; data
directories of an older up keep those on the shared test:///default
(hold_shared_test_driver quiets that).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid5

import libvirt
import msgspec
import structlog

from cloud_engine.api import tokens
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.commands import Command, CommandContext
from cloud_engine.engine.commands.fabric import (
    CreateCluster,
    CreatePhysicalNetwork,
    CreatePod,
    CreateStoragePool,
    CreateZone,
    RegisterHost,
)
from cloud_engine.engine.commands.network import CreateNetwork, ImplementNetwork
from cloud_engine.engine.commands.network_tags import AllocateNetworkTag
from cloud_engine.engine.commands.storage import RegisterTemplate, RequestTemplateDownload
from cloud_engine.engine.commands.storage_fabric import CreateImageStore
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.physical_network import TagRange
from cloud_engine.engine.fabric.pod import Pod
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.template import Template
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect
from cloud_engine.lab import LabHost
from cloud_engine.runner.demo_images import IMAGE, IMAGE_SIZE, ISO, ImageServer, ensure_image
from cloud_engine.runner.up_hosts import lab_host_key, test_host_key

log = structlog.get_logger("runner.demo")

GiB = 1024**3
HOST_CORES = 16
HOST_RAM_MB = 65536
SHARED_TEST_DRIVER = "test:///default"
# The sample domain ("test") libvirt's test:///default driver starts with.
SAMPLE_DOMAIN = UUID("6695eb01-f6a4-8304-79aa-97f2502e193f")
# A fixed id: a later start finds the template (and the URL it was given).
DEMO_TEMPLATE = UUID("5d1c7a52-0b0e-4c1f-9f5e-7d3a2c1b0a01")
# The same system as a bootable ISO (deploy from it, attach it to a VM).
DEMO_ISO = UUID("5d1c7a52-0b0e-4c1f-9f5e-7d3a2c1b0a02")
# Lab hosts and their pool have ids derived from this and their names: a
# later start finds them as they were first registered (their size is the
# machine's, which may change; re-registering would be refused).
LAB_IDS = UUID("0f5a3c2e-7b1d-4e8a-9c6f-2d4b8a1e5c70")
# Lab hosts share this machine; each is registered with its CPUs and RAM
# (so their sum overstates it) and the test driver's CPU overcommit.
LAB_CPU_OVERCOMMIT = 4.0


class DemoFabric(msgspec.Struct, frozen=True):
    zone: UUID
    pod: UUID
    cluster: UUID
    hosts: tuple[UUID, ...]
    pool: UUID
    physical_network: UUID
    template: UUID
    network: UUID
    local_pools: tuple[UUID, ...] = ()  # lab hosts': one each
    public_network: UUID | None = None  # lab hosts': the lab's public network
    iso: UUID | None = None  # the demo ISO


def _run(service: CommandService, key: str, command: Command) -> UUID:
    context = CommandContext(actor="demo", idempotency_key=f"demo/{key}", request_id=f"demo-{key}")
    return service.execute(command, context, timeout=60).aggregate_id


def ensure_demo_fabric(
    service: CommandService,
    store: EventStore,
    data_dir: Path,
    *,
    hosts: int = 2,
    lab: Sequence[LabHost] = (),
    public: tuple[str, str] | None = None,
) -> tuple[DemoFabric, ImageServer | None]:
    """The demo fabric, and the server of its template's image while the
    effector still has to fetch it (close it when done). Its hosts are the
    lab's when lab hosts are given, else `hosts` test-driver hosts; `public`
    (the lab's public network: its CIDR and the machine's address on it)
    makes it the zone's public network and the demo network one with a
    virtual router on it."""
    zone = _run(service, "zone", CreateZone(name="demo-zone", description="created by up"))
    pod = _run(
        service,
        "pod",
        CreatePod(zone_id=zone, name="pod-1", gateway="10.0.0.1", cidr="10.0.0.0/24"),
    )
    cluster = _run(service, "cluster", CreateCluster(zone_id=zone, pod_id=pod, name="cluster-1"))
    if lab:
        host_ids = tuple(_register_lab_host(service, store, zone, pod, cluster, h) for h in lab)
        pool = _lab_pool(service, store, zone, cluster, lab[0].shared_pool_path)
        local_pools = tuple(
            _lab_local_pool(service, store, zone, host_id, host)
            for host, host_id in zip(lab, host_ids, strict=True)
        )
    else:
        local_pools = ()
        host_ids = tuple(
            _register_host(service, zone, pod, cluster, n, data_dir) for n in range(1, hosts + 1)
        )
        shared = [h for h in store.load_many(list(host_ids)).values() if isinstance(h, Host)]
        if any(h.libvirt_uri == SHARED_TEST_DRIVER for h in shared):
            hold_shared_test_driver()
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
    public_id: UUID | None = None
    if lab and public is not None:
        public_id, network = _routed_network(service, store, zone, physical, *public)
    else:
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
    fabric = DemoFabric(
        zone, pod, cluster, host_ids, pool, physical, template, network, local_pools, public_id,
        iso=DEMO_ISO,
    )  # fmt: skip
    return fabric, server


def _routed_network(
    service: CommandService,
    store: EventStore,
    zone: UUID,
    physical: UUID,
    cidr: str,
    gateway: str,
) -> tuple[UUID, UUID]:
    """The lab's public network, and the demo network on the VXLAN underlay
    with a virtual router there (source NAT, public IPs' rules). Its tag is
    taken at once, which implements it and asks for the router, so the
    router is up before the first VM."""
    public = _run(
        service,
        "lab-public-network",
        CreateNetwork(
            account="admin",
            name="public",
            zone_id=zone,
            cidr=cidr,
            gateway=gateway,
            isolation="none",
            purpose="public",
        ),
    )
    network = _run(
        service,
        "lab-network",
        CreateNetwork(
            account="demo",
            name="demo-net",
            zone_id=zone,
            cidr="10.1.0.0/24",
            isolation="VXLAN",
            physical_network_id=physical,
            public_network_id=public,
        ),
    )
    existing = store.load(network)
    if isinstance(existing, Network) and existing.tag is None:
        _run(service, "lab-network-tag", AllocateNetworkTag(network_id=network))
    return public, network


def host_node_xml(cpu_cores: int, ram_mb: int) -> str:
    """A libvirt test driver's starting state: a node of the host's size,
    and no domains, networks or pools."""
    return (
        "<node>\n"
        "  <!-- a demo host of cloud-engine up (libvirt's test driver) -->\n"
        f"  <cpu><nodes>1</nodes><sockets>1</sockets><cores>{cpu_cores}</cores>"
        f"<threads>1</threads><active>{cpu_cores}</active><mhz>2000</mhz>"
        "<model>x86_64</model></cpu>\n"
        f"  <memory>{ram_mb * 1024}</memory>\n"
        "</node>\n"
    )


def demo_host_uri(data_dir: Path, name: str, cpu_cores: int, ram_mb: int) -> str:
    """test:///<data dir>/demo-hosts/<name>.xml, the file written now.

    Each file is a hypervisor of its own: libvirt's test driver keeps a
    separate in-memory state per connection to a file URI (test:///default
    is one state for the whole process), and the effector holds one
    connection per URI (effectors.executor), which its reconciler shares.
    The path is absolute and stays the same for a data directory (the URI
    is in the host's registration event); the file is written again on
    every start, before anything connects."""
    path = data_dir.resolve() / "demo-hosts" / f"{name}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(host_node_xml(cpu_cores, ram_mb))
    return f"test://{path}"


def _register_host(
    service: CommandService, zone: UUID, pod: UUID, cluster: UUID, n: int, data_dir: Path
) -> UUID:
    name = f"host-{n}"
    command = RegisterHost(
        zone_id=zone,
        pod_id=pod,
        cluster_id=cluster,
        name=name,
        cpu_cores=HOST_CORES,
        ram_mb=HOST_RAM_MB,
        libvirt_uri=demo_host_uri(data_dir, name, HOST_CORES, HOST_RAM_MB),
        cpu_overcommit=4.0,
        ram_overcommit=1.5,
    )
    try:
        return _run(service, test_host_key(n).removeprefix("demo/"), command)
    except Conflict:
        # The key was used by an older up, which registered its hosts on the
        # shared test:///default: the same command as then finds that host,
        # and up goes on with it (hold_shared_test_driver quiets it).
        older = msgspec.structs.replace(command, libvirt_uri=SHARED_TEST_DRIVER)
        try:
            return _run(service, name, older)
        except Conflict:
            # Neither: the host names a node file elsewhere, the data
            # directory was moved (its URI is in the registration event).
            raise Conflict(
                f"demo {name} was registered with a libvirt URI naming another"
                f" path than {command.libvirt_uri}: was the data directory moved?"
                " The demo hosts' node files are named by absolute path; move it"
                " back or start on a new data directory",
                field="libvirt_uri",
            ) from None


def lab_host_id(name: str) -> UUID:
    return uuid5(LAB_IDS, f"host/{name}")


def _register_lab_host(
    service: CommandService, store: EventStore, zone: UUID, pod: UUID, cluster: UUID, host: LabHost
) -> UUID:
    host_id = lab_host_id(host.name)
    existing = store.load(host_id)
    if isinstance(existing, Host):
        if existing.libvirt_uri != host.uri:
            # The URI names the lab's state directory, under the data directory.
            raise Conflict(
                f"demo host {host.name} was registered with {existing.libvirt_uri}, not"
                f" {host.uri}: was the data directory moved? Move it back or start on a"
                " new data directory",
                field="libvirt_uri",
            )
        return host_id
    command = RegisterHost(
        id=host_id,
        zone_id=zone,
        pod_id=pod,
        cluster_id=cluster,
        name=host.name,
        cpu_cores=os.cpu_count() or 1,
        ram_mb=_machine_ram_mb(),
        libvirt_uri=host.uri,
        cpu_overcommit=LAB_CPU_OVERCOMMIT,
        # Where the other hosts reach it: live migration, VXLAN.
        underlay_address=host.address,
        underlay_device=host.underlay_device,
    )
    return _run(service, lab_host_key(host.name).removeprefix("demo/"), command)


def _machine_ram_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024**2


LAB_SHARED_POOL = uuid5(LAB_IDS, "pool/shared")


def _lab_pool(
    service: CommandService, store: EventStore, zone: UUID, cluster: UUID, path: str
) -> UUID:
    """The cluster's primary pool on the lab's shared directory (every lab
    host sees it at this path: CloudStack's SharedMountPoint), its capacity
    that of the file system holding it when first created."""
    if isinstance(store.load(LAB_SHARED_POOL), StoragePool):
        return LAB_SHARED_POOL
    command = CreateStoragePool(
        id=LAB_SHARED_POOL,
        zone_id=zone,
        cluster_id=cluster,
        name="primary-1",
        scope="cluster",
        capacity_bytes=_capacity(path),
        url=f"file://{path}",
    )
    return _run(service, "lab-pool", command)


def lab_local_pool_id(host: LabHost) -> UUID:
    # Just above the shared pool's id: first-fit, the default placement,
    # tries a host's pools in id order, so a VM's disks go to the shared
    # pool (which live migration needs) while it has room.
    return UUID(int=LAB_SHARED_POOL.int + int(host.name.removeprefix("h")))


def _lab_local_pool(
    service: CommandService, store: EventStore, zone: UUID, host_id: UUID, host: LabHost
) -> UUID:
    """The host's local pool: a directory only that host sees (and the
    effector, at the same path)."""
    pool_id = lab_local_pool_id(host)
    if isinstance(store.load(pool_id), StoragePool):
        return pool_id
    command = CreateStoragePool(
        id=pool_id,
        zone_id=zone,
        host_id=host_id,
        name=f"local-{host.name}",
        scope="host",
        capacity_bytes=_capacity(host.local_pool_path),
        url=f"file://{host.local_pool_path}",
    )
    return _run(service, f"lab-local-{host.name}", command)


def _capacity(path: str) -> int:
    Path(path).mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).total // GiB * GiB or GiB


# Held for the life of the process: libvirt frees test:///default's state
# when its last connection closes, and the next open starts it afresh, with
# the sample domain again.
_shared_test_driver: list[Any] = []


def hold_shared_test_driver() -> None:
    """For demo hosts an older up registered on test:///default: that driver
    starts with a sample domain named "test", which no VM claims, so the
    reconciler reported it as drift every round. Remove it from this
    process's instance (the effector runs in this process) and keep the
    instance alive."""
    if _shared_test_driver:
        return
    log.warning(
        "demo hosts share one test driver",
        uri=SHARED_TEST_DRIVER,
        note="registered by an older up: each host sees the other's domains;"
        " a new data directory gives each its own",
    )
    conn = libvirt.open(SHARED_TEST_DRIVER)
    try:
        sample = conn.lookupByUUID(SAMPLE_DOMAIN.bytes)
    except libvirt.libvirtError:
        sample = None  # removed already (or a libvirt without it)
    if sample is not None:
        if sample.isActive():
            sample.destroy()
        sample.undefine()
    _shared_test_driver.append(conn)


def _ensure_template(
    service: CommandService, store: EventStore, zone: UUID, root: Path
) -> tuple[UUID, ImageServer | None]:
    """The demo template and the demo ISO registered with the URLs of the
    image server (on the port it was first given), their downloads
    requested; the server runs until up stops, unless both are Ready."""
    existing, existing_iso = store.load(DEMO_TEMPLATE), store.load(DEMO_ISO)
    ready = [isinstance(t, Template) and t.state == "Ready" for t in (existing, existing_iso)]
    if all(ready):
        return DEMO_TEMPLATE, None
    image = ensure_image(root)
    known = next((t for t in (existing, existing_iso) if isinstance(t, Template)), None)
    port = urlsplit(known.url).port or 0 if known is not None else 0
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
            checksum=f"sha256:{image.sha256}",
        )
        _run(service, "template-v2", register)
        _run(service, "template-v2-download", RequestTemplateDownload(template_id=DEMO_TEMPLATE))
        iso = RegisterTemplate(
            id=DEMO_ISO,
            name="tiny-linux-live",
            zone_id=zone,
            url=existing_iso.url if isinstance(existing_iso, Template) else server.url(ISO),
            format="iso",
            size_bytes=Path(image.iso).stat().st_size,
            os_type="linux",
            checksum=f"sha256:{image.iso_sha256}",
            bootable=True,
        )
        _run(service, "iso", iso)
        _run(service, "iso-download", RequestTemplateDownload(template_id=DEMO_ISO))
    except BaseException:
        server.close()
        raise
    return DEMO_TEMPLATE, server


def describe(store: EventStore, fabric: DemoFabric) -> list[str]:
    ids = [fabric.zone, fabric.pod, fabric.cluster, *fabric.hosts, fabric.pool, *fabric.local_pools]
    ids += [fabric.physical_network, fabric.template]
    ids += [] if fabric.iso is None else [fabric.iso]
    ids.append(fabric.network)
    if fabric.public_network is not None:
        ids.append(fabric.public_network)
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
        f"{type(aggregate).__name__:<16} {name:<15} {aggregate.id}  "
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
