"""One fabric builder, for the tests and the benches.

A fabric to deploy on (one zone, pod and cluster; hosts, each with its own
libvirt URI and underlay; storage pools, shared or a host's own; image
stores, physical networks, templates and guest networks) is described by a
FabricSpec. One generator, `steps`, turns it into the engine commands that
make it, stage by stage (the commands of a stage do not depend on each
other), and learns each new aggregate's id from whatever runs them. So the
same fabric is built through any transport:

- build(service, spec): a CommandService (each stage submitted together,
  so the service group-commits it);
- await build_http(api, spec, admin=...): the HTTP API, each command as its
  route's body, as the admin; a template made Ready there takes the command
  service that plays the effector (MarkTemplateDownloaded has no route);
- build_with(do, spec): any `do(command) -> id` (dispatch on an in-memory
  unit of work, a scenario that records what it ran);
- plan(spec): no transport: the commands, with their ids drawn here, for a
  bench that runs the same commands through two write paths.

The fabric comes back as a Fabric of UUIDs (of strings over HTTP, as the
API's JSON has them). bench/ imports this module too: its scripts put the
repository root on sys.path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar
from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.commands.base import Command
from cloud_engine.engine.commands.hosts import RegisterHost
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.physical_networks import CreatePhysicalNetwork
from cloud_engine.engine.commands.storage import (
    MarkTemplateDownloaded,
    RegisterTemplate,
    RequestTemplateDownload,
)
from cloud_engine.engine.commands.storage_fabric import CreateImageStore, CreateStoragePool
from cloud_engine.engine.commands.zones import CreateCluster, CreatePod, CreateZone
from cloud_engine.engine.fabric.image_store import ImageStoreProtocol
from cloud_engine.engine.fabric.physical_network import Isolation, TagRange
from cloud_engine.engine.fabric.storage_pool import StorageScope
from cloud_engine.engine.fabric.zone import NetworkType
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.virtual.template import TemplateFormat

TEST_URI = "test:///default"
MiB = 1 << 20

# What the spec says --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HostSpec:
    name: str = "h"
    libvirt_uri: str = TEST_URI
    cpu_cores: int = 4
    ram_mb: int = 4096
    cpu_mhz: int | None = None
    cpu_overcommit: float = 1.0
    tags: tuple[str, ...] = ()
    # Where other hosts reach it (live migration, VXLAN) and on which device.
    underlay_address: str | None = None
    underlay_device: str | None = None


def hosts(count: int, uri: str = TEST_URI, **shape: Any) -> tuple[HostSpec, ...]:
    """count hosts h0, h1, ... on one libvirt URI, all of one shape."""
    return hosts_on([uri] * count, **shape)


def hosts_on(uris: Sequence[str], **shape: Any) -> tuple[HostSpec, ...]:
    """One host per libvirt URI: h0 on the first, h1 on the second, ..."""
    return tuple(HostSpec(name=f"h{n}", libvirt_uri=uri, **shape) for n, uri in enumerate(uris))


@dataclass(frozen=True, kw_only=True)
class PoolSpec:
    name: str = "primary"
    url: str = "/var/lib/cloud-engine/pool"
    capacity_bytes: int = 1 << 40
    # A cluster-scoped pool belongs to the fabric's cluster; a host-scoped
    # one is the local storage of the spec's host at index `host`.
    scope: StorageScope = "cluster"
    host: int | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ImageStoreSpec:
    url: str
    name: str = "secondary"
    protocol: ImageStoreProtocol = "file"


@dataclass(frozen=True, kw_only=True)
class PhysicalNetworkSpec:
    name: str = "guest"
    isolation: Isolation = "VXLAN"
    tags: tuple[int, int] | None = (5000, 5999)


@dataclass(frozen=True, kw_only=True)
class TemplateSpec:
    name: str = "tiny"
    # Loopback, where nothing listens: a download that is asked for fails fast.
    url: str = "http://127.0.0.1:9/tiny.qcow2"
    format: TemplateFormat = "qcow2"
    size_bytes: int = MiB
    os_type: str = "None"
    checksum: str | None = None
    bootable: bool = True  # format iso: a VM may boot from it
    # "registered": nothing asked; "requested": its download asked for (the
    # effector makes it Ready); "ready": as if the effector had downloaded it.
    state: Literal["registered", "requested", "ready"] = "ready"


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    cidr: str
    name: str = "net"
    account: str = "acme"
    isolation: Isolation = "none"
    gateway: str | None = None
    # On the fabric's first physical network (an isolated network).
    physical: bool = False


@dataclass(frozen=True, kw_only=True)
class FabricSpec:
    zone: str = "z"
    zone_description: str = ""
    network_type: NetworkType = "Advanced"
    pod: str = "p"
    gateway: str = "10.0.0.1"
    cidr: str = "10.0.0.0/24"
    cluster: str = "c"
    hosts: tuple[HostSpec, ...] = ()
    pools: tuple[PoolSpec, ...] = ()
    image_stores: tuple[ImageStoreSpec, ...] = ()
    physical_networks: tuple[PhysicalNetworkSpec, ...] = ()
    templates: tuple[TemplateSpec, ...] = ()
    networks: tuple[NetworkSpec, ...] = ()


# What was built --------------------------------------------------------------------

Id = TypeVar("Id")
Other = TypeVar("Other")


@dataclass(frozen=True)
class Fabric(Generic[Id]):
    """The ids of what was built, in the spec's order."""

    zone: Id
    pod: Id
    cluster: Id
    hosts: tuple[Id, ...] = ()
    pools: tuple[Id, ...] = ()
    image_stores: tuple[Id, ...] = ()
    physical_networks: tuple[Id, ...] = ()
    templates: tuple[Id, ...] = ()
    networks: tuple[Id, ...] = ()

    @property
    def host(self) -> Id:
        return _first(self.hosts, "host")

    @property
    def pool(self) -> Id:
        return _first(self.pools, "storage pool")

    @property
    def image_store(self) -> Id:
        return _first(self.image_stores, "image store")

    @property
    def physical_network(self) -> Id:
        return _first(self.physical_networks, "physical network")

    @property
    def template(self) -> Id:
        return _first(self.templates, "template")

    @property
    def network(self) -> Id:
        return _first(self.networks, "network")

    def map(self, f: Callable[[Id], Other]) -> Fabric[Other]:
        def each(ids: tuple[Id, ...]) -> tuple[Other, ...]:
            return tuple(f(i) for i in ids)

        return Fabric(
            f(self.zone),
            f(self.pod),
            f(self.cluster),
            each(self.hosts),
            each(self.pools),
            each(self.image_stores),
            each(self.physical_networks),
            each(self.templates),
            each(self.networks),
        )


def _first(ids: tuple[Id, ...], what: str) -> Id:
    if not ids:
        raise LookupError(f"the fabric has no {what}")
    return ids[0]


# The commands ----------------------------------------------------------------------

# A stage of commands that do not depend on each other; the ids they made.
Steps = Generator[list[Command], list[UUID], Fabric[UUID]]


def host_command(fabric: Fabric[UUID], host: HostSpec) -> RegisterHost:
    """Another host in the fabric's cluster."""
    return _register(fabric.zone, fabric.pod, fabric.cluster, host)


def pool_command(fabric: Fabric[UUID], pool: PoolSpec) -> CreateStoragePool:
    """Another pool in the fabric's zone (and cluster, or host, by its scope)."""
    return _pool(fabric.zone, fabric.cluster, fabric.hosts, pool)


def _register(zone: UUID, pod: UUID, cluster: UUID, h: HostSpec) -> RegisterHost:
    return RegisterHost(
        zone_id=zone,
        pod_id=pod,
        cluster_id=cluster,
        name=h.name,
        cpu_cores=h.cpu_cores,
        ram_mb=h.ram_mb,
        libvirt_uri=h.libvirt_uri,
        cpu_mhz=h.cpu_mhz,
        cpu_overcommit=h.cpu_overcommit,
        tags=h.tags,
        underlay_address=h.underlay_address,
        underlay_device=h.underlay_device,
    )


def _pool(zone: UUID, cluster: UUID, hosts: Sequence[UUID], p: PoolSpec) -> CreateStoragePool:
    if (p.scope == "host") != (p.host is not None):
        raise ValueError(f"pool {p.name}: a host index exactly when its scope is host")
    return CreateStoragePool(
        zone_id=zone,
        cluster_id=cluster if p.scope == "cluster" else None,
        host_id=None if p.host is None else hosts[p.host],
        name=p.name,
        scope=p.scope,
        capacity_bytes=p.capacity_bytes,
        url=p.url,
        tags=p.tags,
    )


def steps(spec: FabricSpec) -> Steps:
    """The fabric's commands, stage by stage; send each stage's ids back."""
    [zone] = yield [
        CreateZone(
            name=spec.zone, description=spec.zone_description, network_type=spec.network_type
        )
    ]
    [pod] = yield [CreatePod(zone_id=zone, name=spec.pod, gateway=spec.gateway, cidr=spec.cidr)]
    [cluster] = yield [CreateCluster(zone_id=zone, pod_id=pod, name=spec.cluster)]
    host_ids = yield [_register(zone, pod, cluster, h) for h in spec.hosts]
    pool_ids = yield [_pool(zone, cluster, host_ids, p) for p in spec.pools]
    store_ids = yield [
        CreateImageStore(zone_id=zone, name=s.name, url=s.url, protocol=s.protocol)
        for s in spec.image_stores
    ]
    physical_ids = yield [
        CreatePhysicalNetwork(
            zone_id=zone,
            name=p.name,
            isolation=p.isolation,
            tag_range=None if p.tags is None else TagRange(*p.tags),
        )
        for p in spec.physical_networks
    ]
    template_ids = yield [
        RegisterTemplate(
            name=t.name,
            zone_id=zone,
            url=t.url,
            format=t.format,
            size_bytes=t.size_bytes,
            os_type=t.os_type,
            checksum=t.checksum,
            bootable=t.bootable,
        )
        for t in spec.templates
    ]
    made = list(zip(template_ids, spec.templates, strict=True))
    yield [RequestTemplateDownload(template_id=i) for i, t in made if t.state != "registered"]
    yield [MarkTemplateDownloaded(template_id=i) for i, t in made if t.state == "ready"]
    network_ids = yield [
        CreateNetwork(
            account=n.account,
            name=n.name,
            zone_id=zone,
            cidr=n.cidr,
            gateway=n.gateway,
            isolation=n.isolation,
            physical_network_id=_first(tuple(physical_ids), "physical network")
            if n.physical
            else None,
        )
        for n in spec.networks
    ]
    return Fabric(
        zone,
        pod,
        cluster,
        tuple(host_ids),
        tuple(pool_ids),
        tuple(store_ids),
        tuple(physical_ids),
        tuple(template_ids),
        tuple(network_ids),
    )


def subject(command: Command) -> UUID:
    """The aggregate a command makes (its id) or acts on (its first id field)."""
    made: UUID | None = getattr(command, "id", None)
    if made is not None:
        return made
    for name in command.__struct_fields__:
        value = getattr(command, name)
        if isinstance(value, UUID):
            return value
    raise ValueError(f"{type(command).__name__} names no aggregate")


# The transports --------------------------------------------------------------------


def build_with(do: Callable[[Command], UUID], spec: FabricSpec) -> Fabric[UUID]:
    """Each command through do, which returns the id of the aggregate it made."""
    return _drive(steps(spec), lambda stage: [do(c) for c in stage])


def build(
    service: CommandService,
    spec: FabricSpec,
    *,
    timeout: float = 60.0,
) -> Fabric[UUID]:
    """Through a CommandService: each stage's commands submitted together."""

    def run(stage: list[Command]) -> list[UUID]:
        futures = [service.submit(c) for c in stage]
        return [f.result(timeout).aggregate_id for f in futures]

    return _drive(steps(spec), run)


def plan(spec: FabricSpec) -> tuple[list[Command], Fabric[UUID]]:
    """The commands in order, each new aggregate's id drawn here, and the
    fabric they make once run."""
    commands: list[Command] = []

    def draw(command: Command) -> UUID:
        if "id" in command.__struct_fields__:
            command = msgspec.structs.replace(command, id=uuid4())
        commands.append(command)
        return subject(command)

    return commands, build_with(draw, spec)


def _drive(steps: Steps, run: Callable[[list[Command]], list[UUID]]) -> Fabric[UUID]:
    stage = next(steps)
    while True:
        try:
            stage = steps.send(run(stage))
        except StopIteration as done:
            fabric: Fabric[UUID] = done.value
            return fabric


class HttpReply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...

    def json(self) -> Any: ...


class HttpApi(Protocol):
    async def post(self, path: str, body: Any = None, *, token: str | None = None) -> HttpReply: ...


# The route that creates each kind of aggregate; its body is the command's
# fields (the contract's names are the engine's) without the id.
ROUTES: dict[type[Command], str] = {
    CreateZone: "/v1/zones",
    CreatePod: "/v1/pods",
    CreateCluster: "/v1/clusters",
    RegisterHost: "/v1/hosts",
    CreateStoragePool: "/v1/storage-pools",
    CreateImageStore: "/v1/image-stores",
    CreatePhysicalNetwork: "/v1/physical-networks",
    RegisterTemplate: "/v1/templates",
    CreateNetwork: "/v1/networks",
}


async def build_http(
    api: HttpApi,
    spec: FabricSpec,
    *,
    admin: str,
    effector: CommandService | None = None,
) -> Fabric[str]:
    """Through the HTTP API with the admin's token; the ids are the API's
    strings."""
    run = steps(spec)
    stage = next(run)
    while True:
        made = [await _post(api, c, admin, effector) for c in stage]
        try:
            stage = run.send(made)
        except StopIteration as done:
            fabric: Fabric[UUID] = done.value
            return fabric.map(str)


async def _post(
    api: HttpApi,
    command: Command,
    admin: str,
    effector: CommandService | None,
) -> UUID:
    if isinstance(command, MarkTemplateDownloaded):
        # What the effector reports once the image is in the image store.
        if effector is None:
            raise ValueError("a Ready template over HTTP takes the effector's command service")
        await asyncio.to_thread(effector.execute, command, None, 30)
        return command.template_id
    if isinstance(command, RequestTemplateDownload):
        path = f"/v1/templates/{command.template_id}/download"
        download = await api.post(path, token=admin)
        assert download.status == 202, (path, download.status, download.body)
        return command.template_id
    path = ROUTES[type(command)]
    body = {k: v for k, v in msgspec.to_builtins(command).items() if v is not None}
    reply = await api.post(path, body, token=admin)
    assert reply.status == 202, (path, reply.status, reply.body)
    accepted = reply.json()
    assert accepted["operation_id"] is None, reply.body
    return UUID(accepted["resource_id"])
