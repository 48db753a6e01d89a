"""The engine's whole pipeline on lab hosts: a fabric whose hosts are the
lab's (each its own libvirtd, registered with its underlay), a shared pool
on the lab's shared directory, a local pool per host, a VXLAN physical
network, a template served over loopback; the relay, the projection worker,
the engine (operation manager and result recorder) and an effector (in this
process or as `cloud-engine effector`), and what the tests look at on the
hosts."""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from cloud_engine.effectors.host_netns import HostNamespaces
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.network.driver import NetworkDriver
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.engine.commands.fabric import CreateCluster, CreatePod, CreateZone, RegisterHost
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.operations import DeployVm, VmOperation
from cloud_engine.engine.commands.physical_networks import CreatePhysicalNetwork
from cloud_engine.engine.commands.storage import RegisterTemplate, RequestTemplateDownload
from cloud_engine.engine.commands.storage_fabric import CreateImageStore, CreateStoragePool
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.physical_network import TagRange
from cloud_engine.engine.operations.deploy_ids import nic_id
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.lab import LabHost
from cloud_engine.runner import guest_image
from tests.integration.cli_process import ASYNCIO, CliProcess, cli_env
from tests.integration.effectors.effector_pipeline import Pipeline, finish, wait_for
from tests.integration.effectors.template_server import Served, make_template_image, serve

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

GiB = 1 << 30
# The names the effector gives on a host (the CLI's too): every test's
# leftovers are found by them (lab hosts run nothing else of the engine).
NAMES = Names()


@dataclass
class LabFabric:
    zone: uuid.UUID
    hosts: dict[uuid.UUID, LabHost]  # engine host id -> lab host
    shared_pool: uuid.UUID
    local_pools: dict[uuid.UUID, uuid.UUID]  # engine host id -> its local pool
    local_dirs: dict[uuid.UUID, Path]  # engine host id -> its local pool's directory
    template: uuid.UUID
    network: uuid.UUID  # VXLAN
    dirs: list[Path] = field(default_factory=list)

    def lab_host(self, host_id: uuid.UUID | None) -> LabHost:
        assert host_id is not None
        return self.hosts[host_id]

    def host_of(self, lab_host: LabHost) -> uuid.UUID:
        return next(h for h, lh in self.hosts.items() if lh.name == lab_host.name)


def build_fabric(
    service: CommandService, hosts: list[LabHost], served: Served, tmp: Path, *, guest: bool = False
) -> LabFabric:
    run = service.execute
    tag = uuid.uuid4().hex[:8]
    zone = run(CreateZone(name=f"lab-{tag}")).aggregate_id
    pod = run(
        CreatePod(zone_id=zone, name="p", gateway="10.0.0.1", cidr="10.0.0.0/24")
    ).aggregate_id
    cluster = run(CreateCluster(zone_id=zone, pod_id=pod, name="c")).aggregate_id
    registered: dict[uuid.UUID, LabHost] = {}
    for lab_host in hosts:
        host_id = run(
            RegisterHost(
                zone_id=zone,
                pod_id=pod,
                cluster_id=cluster,
                name=lab_host.name,
                cpu_cores=4,
                ram_mb=2048,
                libvirt_uri=lab_host.uri,
                underlay_address=lab_host.address,
                underlay_device=lab_host.underlay_device,
            )
        ).aggregate_id
        registered[host_id] = lab_host
    shared_dir = Path(hosts[0].shared_pool_path) / f"t{tag}"
    dirs = [shared_dir]
    shared = run(
        CreateStoragePool(
            zone_id=zone,
            cluster_id=cluster,
            name="shared",
            scope="cluster",
            capacity_bytes=64 * GiB,
            url=str(shared_dir),
        )
    ).aggregate_id
    local: dict[uuid.UUID, uuid.UUID] = {}
    local_dirs: dict[uuid.UUID, Path] = {}
    for host_id, lab_host in registered.items():
        local_dir = local_dirs[host_id] = Path(lab_host.local_pool_path) / f"t{tag}"
        dirs.append(local_dir)
        local[host_id] = run(
            CreateStoragePool(
                zone_id=zone,
                name=f"local-{lab_host.name}",
                scope="host",
                host_id=host_id,
                capacity_bytes=8 * GiB,
                url=str(local_dir),
            )
        ).aggregate_id
    run(CreateImageStore(zone_id=zone, name="images", url=str(tmp / "images"), protocol="file"))
    if guest:
        # The tiny-linux image: a Linux that boots (runner/guest_image.py).
        image = guest_image.copy_to(served.root)
        name, size, digest = Path(image.path).name, image.virtual_size, image.sha256
    else:
        # An empty disk: the guest sits in firmware, which most tests need.
        path, digest = make_template_image(served.root, "tiny.qcow2")
        name, size = path.name, 4 * 1024 * 1024
    template = run(
        RegisterTemplate(
            name="tiny",
            zone_id=zone,
            url=f"{served.base_url}/{name}",
            format="qcow2",
            size_bytes=size,
            os_type="linux" if guest else "None",
            checksum=f"sha256:{digest}",
        )
    ).aggregate_id
    # VNIs of this test's own: a device another test left cannot answer.
    first = random.randrange(10_000, 1_000_000)
    physical = run(
        CreatePhysicalNetwork(
            zone_id=zone,
            name="underlay",
            isolation="VXLAN",
            tag_range=TagRange(first=first, last=first + 9),
        )
    ).aggregate_id
    network = run(
        CreateNetwork(
            account="acme",
            name="overlay",
            zone_id=zone,
            cidr="10.60.0.0/24",
            isolation="VXLAN",
            physical_network_id=physical,
        )
    ).aggregate_id
    return LabFabric(
        zone=zone,
        hosts=registered,
        shared_pool=shared,
        local_pools=local,
        local_dirs=local_dirs,
        template=template,
        network=network,
        dirs=dirs,
    )


def start_effector(pipeline: Pipeline, *, stop_timeout_s: float = 5.0) -> EffectorService:
    effector = EffectorService(
        pipeline.target,
        effector_config(pipeline.broker, pipeline.prefix),
        names=NAMES,
        name="effector@lab-test",
        stop_timeout_s=stop_timeout_s,
        reconcile_interval_s=5.0,
    )
    pipeline.tasks.append(asyncio.create_task(effector.run(pipeline.stop)))
    return effector


def start_engine(pipeline: Pipeline, service: CommandService, store: EventStore) -> None:
    pipeline.start_engine_side()
    pipeline.start_recorder(service)
    pipeline.start_manager(service, store, sweep_interval_s=1.0)


async def template_ready(
    pipeline: Pipeline, service: CommandService, store: EventStore, fabric: LabFabric
) -> None:
    await service.execute_async(RequestTemplateDownload(template_id=fabric.template))
    await wait_for(
        "template Ready",
        lambda: getattr(store.load(fabric.template), "state", "") == "Ready",
        pipeline,
    )


def reserved_on(store: EventStore, fabric: LabFabric, vm_id: uuid.UUID) -> list[str]:
    """The lab hosts whose engine Host holds a reservation for the VM."""
    found = []
    for host_id, lab_host in fabric.hosts.items():
        host = store.load(host_id)
        assert isinstance(host, Host)
        if vm_id in host.reservations:
            found.append(lab_host.name)
    return found


# What the hosts show -------------------------------------------------------------


def domain_states(hosts: list[LabHost], vm_id: uuid.UUID) -> dict[str, int]:
    """Lab host name -> libvirt state of the VM's domain, where it is defined."""
    found = {}
    for lab_host in hosts:
        conn = libvirt.open(lab_host.uri)
        try:
            dom = conn.lookupByUUIDString(str(vm_id))
            found[lab_host.name] = dom.state()[0]
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()
    return found


def running_on(hosts: list[LabHost], vm_id: uuid.UUID) -> list[str]:
    return [
        name
        for name, state in domain_states(hosts, vm_id).items()
        if state == libvirt.VIR_DOMAIN_RUNNING
    ]


def domain_uuids(lab_host: LabHost) -> set[uuid.UUID]:
    conn = libvirt.open(lab_host.uri)
    try:
        return {uuid.UUID(d.UUIDString()) for d in conn.listAllDomains()}
    finally:
        conn.close()


def nic_mac(lab_host: LabHost, vm_id: uuid.UUID) -> str:
    conn = libvirt.open(lab_host.uri)
    try:
        xml = conn.lookupByUUIDString(str(vm_id)).XMLDesc(0)
    finally:
        conn.close()
    mac = ET.fromstring(xml).find("devices/interface/mac")
    assert mac is not None
    return str(mac.get("address"))


def dhcp_known(lab_host: LabHost, network: str) -> dict[str, str]:
    """MAC -> address the host's DHCP of the network knows."""
    hv = Hypervisor(lab_host.uri)
    try:
        state = NetworkDriver(hv).observe(network)
    finally:
        hv.close()
    return {h.mac: h.ip for h in state.dhcp_hosts}


def clean_up(hosts: list[LabHost], fabric: LabFabric | None) -> None:
    """The engine's domains, networks (with their VXLAN ports) and pools
    off every lab host, and the test's pool directories."""
    namespaces = HostNamespaces()
    for lab_host in hosts:
        hv = Hypervisor(lab_host.uri, attempts=1)
        try:
            try:
                conn = hv.conn
            except HypervisorError:
                continue  # a host the test took down has nothing left

            for dom in conn.listAllDomains():
                if dom.name().startswith(f"{NAMES.prefix}vm-"):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            driver = NetworkDriver(hv, netns=namespaces.netns(lab_host.uri))
            for net in conn.listAllNetworks():
                if net.name().startswith(f"{NAMES.prefix}net-"):
                    driver.remove(net.name())
            for pool in conn.listAllStoragePools():
                if pool.name().startswith(f"{NAMES.prefix}pool-"):
                    if pool.isActive():
                        pool.destroy()
                    pool.undefine()
        finally:
            hv.close()
    for path in [] if fabric is None else fabric.dirs:
        shutil.rmtree(path, ignore_errors=True)


# `cloud-engine effector` as a process ---------------------------------------------


class EffectorProcess(CliProcess):
    """`cloud-engine effector` on the test's schema and topic prefix."""

    def __init__(
        self,
        target: DatabaseTarget,
        broker: str,
        prefix: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        extra = {**ASYNCIO, **(env or {})}
        super().__init__(["effector"], cli_env(target, broker, prefix, extra), log)


# The whole of it, for a test -------------------------------------------------------


class Cloud:
    def __init__(
        self, pipeline: Pipeline, service: CommandService, store: EventStore, fabric: LabFabric
    ) -> None:
        self.pipeline, self.service, self.store, self.fabric = pipeline, service, store, fabric
        self.deploys: dict[uuid.UUID, uuid.UUID] = {}  # VM id -> its deploy operation

    async def deploy(self, name: str, **options: object) -> uuid.UUID:
        # Dispersing also takes the pool with the most room for its disks:
        # the shared one (a host's local pool is smaller).
        options.setdefault("strategy", "dispersing")
        options.setdefault("network_ids", (self.fabric.network,))
        result = await self.service.execute_async(
            DeployVm(
                account="acme",
                name=name,
                zone_id=self.fabric.zone,
                template_id=self.fabric.template,
                spec=VmSpec(cpus=1, ram_mb=128, root_disk_gb=1),
                **options,  # type: ignore[arg-type]
            )
        )
        op = await finish(self.pipeline, self.store, result.aggregate_id)
        assert op.status == "succeeded", op.error
        vm_id = uuid.UUID(str(result.value))
        self.deploys[vm_id] = result.aggregate_id
        return vm_id

    def addresses(self, vm_id: uuid.UUID) -> list[str]:
        """The addresses the engine allocated to the VM's NICs, in order."""
        found = []
        for index in range(len(self.vm(vm_id).network_ids)):
            nic = self.store.load(nic_id(self.deploys[vm_id], index))
            assert isinstance(nic, Nic) and nic.address is not None
            found.append(nic.address)
        return found

    async def operate(self, kind: str, vm_id: uuid.UUID, **options: object) -> tuple[str, str]:
        result = await self.service.execute_async(
            VmOperation(kind=kind, vm_id=vm_id, **options)  # type: ignore[arg-type]
        )
        op = await finish(self.pipeline, self.store, result.aggregate_id)
        return op.status, op.error or ""

    def vm(self, vm_id: uuid.UUID) -> VirtualMachine:
        found = self.store.load(vm_id)
        assert isinstance(found, VirtualMachine)
        return found

    async def template_ready(self) -> None:
        await template_ready(self.pipeline, self.service, self.store, self.fabric)

    def where(self, vm_id: uuid.UUID) -> str:
        """The lab host the record puts the VM on."""
        return self.fabric.lab_host(self.vm(vm_id).host_id).name


@asynccontextmanager
async def lab_cloud(
    pg_target: DatabaseTarget,
    service: CommandService,
    store: EventStore,
    broker: str,
    prefix: str,
    hosts: list[LabHost],
    tmp_path: Path,
    *,
    effector: bool = True,
    engine: bool = True,
    guest: bool = False,
) -> AsyncIterator[Cloud]:
    """The pipeline on a fabric of the lab's hosts; without an effector in
    this process, the caller starts one (EffectorProcess) and then asks for
    template_ready(); without the engine (operation manager and result
    recorder) in it, the same with an EngineProcess. With guest, the
    template is the tiny-linux image: its VMs boot Linux (under TCG: see
    runner/up_hosts.py)."""
    # Start on clean hosts: a host an earlier test powered off came back
    # with its old definitions (power_on(wipe=False)) after that test's
    # clean-up had found it down, and its network's bridge, on the same
    # CIDR, made libvirt refuse this test's network (seen in CI).
    clean_up(hosts, None)
    pipeline = Pipeline(pg_target, broker, prefix)
    fabric = None
    root = tmp_path / "www"
    root.mkdir()
    try:
        with serve(root) as served:
            if engine:
                start_engine(pipeline, service, store)
            else:
                pipeline.start_engine_side()  # the relay and the read models
            if effector:
                # A booted guest powers off on ACPI within seconds (under
                # TCG, on a busy machine: allow for it); an empty one never.
                start_effector(pipeline, stop_timeout_s=60.0 if guest else 5.0)
            fabric = build_fabric(service, hosts, served, tmp_path, guest=guest)
            made = Cloud(pipeline, service, store, fabric)
            if effector and engine:
                await made.template_ready()
            yield made
    finally:
        await pipeline.close()
        clean_up(hosts, fabric)


@pytest.fixture
async def cloud(
    pg_target, service, store, broker, topic_prefix, hosts: list[LabHost], tmp_path: Path
) -> AsyncIterator[Cloud]:
    async with lab_cloud(pg_target, service, store, broker, topic_prefix, hosts, tmp_path) as made:
        yield made


@pytest.fixture
async def guest_cloud(
    pg_target, service, store, broker, topic_prefix, hosts: list[LabHost], tmp_path: Path
) -> AsyncIterator[Cloud]:
    """The cloud with real guests: its template is the tiny-linux image."""
    async with lab_cloud(
        pg_target, service, store, broker, topic_prefix, hosts, tmp_path, guest=True
    ) as made:
        yield made
