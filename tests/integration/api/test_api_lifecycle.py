"""The whole life of a VM driven over real HTTP (uvicorn on a loopback port),
with the pipeline in-process as in test_api_e2e (relay, projection worker,
operation manager, result recorder, effector on the dev broker).

Every step is an HTTP command; the test follows its operation at
/v1/operations/{id} until it succeeded and then checks the resources it
touched through the API's reads (which follow the log, so they are polled):

    deploy -> Running, stop -> Stopped, start -> Running, reboot -> Running
    (a stop sent while the reboot runs is refused with a 409 problem
    document), migrate to the host the caller names, stop, a data volume
    created and attached (the VM's disks), snapshotted, resized, reverted
    (back to the snapshot's size), resized again, detached, destroy ->
    Destroyed, recover -> Stopped, destroy, expunge -> Expunged with its
    host capacity, root volume, NIC and IP address given back; the VM's
    events show that history in order.

Two backends:

- "test-driver": hosts on libvirt's test:///default (in-memory, fast). It
  cannot do three of the steps, so they are left out there:
  * resize: the test driver does not implement virStorageVolResize
    (StorageDriver.resize calls virStorageVol.resize);
  * snapshot and revert: they are `qemu-img snapshot` on the volume's file
    (effectors/storage/qemu_img.py), and the test driver's pools hold no
    files.
- "qemu": hosts on qemu:///system (real libvirtd and QEMU, a guest without
  an OS): every step. Both engine hosts are the same libvirtd, so the
  migration moves the engine's record (host, capacity), not the domain.
  Whatever the test leaves on the host under its name prefix is removed.

The conflicting command is made deterministic by a gate in front of the
effector's work: while it is closed, the reboot's work item waits and the
reboot operation provably still holds the VM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from api_harness import PROBLEM, Api, Reply, created

from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.bus.work import WorkItem
from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.orchestration.manager import OperationManager, manager_config
from cloud_engine.orchestration.recorder import ResultRecorder
from cloud_engine.projections.worker import ProjectionWorker, consumer_config
from tests import fabric
from tests.integration.libvirt_cleanup import clean_up

pytestmark = pytest.mark.postgres

WAIT_S = 90.0
GIB = 1 << 30
TERMINAL = ("succeeded", "failed", "compensated")


# The backends ----------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    uri: str
    names: Names
    # Volume files on the host: resize, snapshot, revert and expunge work.
    real: bool


@pytest.fixture(
    params=[
        pytest.param("test:///default", id="test-driver"),
        pytest.param("qemu:///system", id="qemu", marks=pytest.mark.libvirt),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    uri: str = request.param
    names = Names(prefix=f"ce-lc{uuid.uuid4().hex[:6]}-")
    real = not uri.startswith("test:")
    if real:
        try:
            libvirt.open(uri).close()
        except libvirt.libvirtError as e:
            pytest.fail(f"libvirt at {uri} does not answer ({e}); run scripts/libvirt-host")
    try:
        yield Backend(uri, names, real)
    finally:
        if real:
            clean_up(uri, names.prefix)


# The pipeline ----------------------------------------------------------------------


class GatedEffector(EffectorService):
    """The effector with a gate in front of its work: while the gate is
    closed, work items wait and no result is published."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()

    async def execute(self, item: WorkItem) -> EffectorResult | None:
        await self.gate.wait()
        return await super().execute(item)


@dataclass
class Pipeline:
    tasks: list[asyncio.Task[None]]
    effector: GatedEffector


@pytest.fixture
async def pipeline(
    api: Api, broker: str, topic_prefix: str, backend: Backend
) -> AsyncIterator[Pipeline]:
    target, service, store = api.target, api.service, api.store
    stop = asyncio.Event()
    effector = GatedEffector(
        target,
        effector_config(broker, topic_prefix),
        names=backend.names,
        name="effector@api-lifecycle",
        stop_timeout_s=2.0,
    )
    runs: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = [
        Relay(target, RelayConfig(bootstrap=broker, topic_prefix=topic_prefix, partitions=2)).run,
        ProjectionWorker(target, consumer_config(broker, topic_prefix)).run,
        OperationManager(
            service, store, target, manager_config(broker, topic_prefix), sweep_interval_s=2.0
        ).run,
        ResultRecorder(service, broker, topic_prefix).run,
        effector.run,
    ]
    tasks = [asyncio.create_task(run(stop)) for run in runs]
    try:
        yield Pipeline(tasks, effector)
    finally:
        effector.gate.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


# Driving it over HTTP ----------------------------------------------------------------


class TimedOut(AssertionError):
    pass


Fabric = fabric.Fabric[str]


@dataclass
class Flow:
    """The steps of the test, each over HTTP, as the tenant alice (an admin
    only where the API requires one)."""

    api: Api
    pipeline: Pipeline

    async def until(self, what: str, probe: Callable[[], Awaitable[Any]]) -> Any:
        deadline = time.monotonic() + WAIT_S
        while True:
            for task in self.pipeline.tasks:
                if task.done() and task.exception() is not None:
                    raise AssertionError(f"a pipeline task failed: {task.exception()!r}")
            value = await probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimedOut(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def get(self, path: str, token: str | None = None) -> Any:
        reply = await self.api.get(path, token=token or self.api.alice)
        assert reply.status == 200, (path, reply.status, reply.body)
        return reply.json()

    async def read(self, path: str, *, token: str | None = None, **want: Any) -> dict[str, Any]:
        """The resource at path once it shows every wanted value: `state` is
        the resource's state, other names are its attributes. Read models
        follow the log, so it is polled; a timeout shows the last answer."""
        seen: dict[str, Any] = {}

        async def probe() -> dict[str, Any] | None:
            nonlocal seen
            seen = await self.get(path, token)
            return seen if _differences(seen, want) == {} else None

        try:
            found: dict[str, Any] = await self.until(f"{path} to show {want}", probe)
        except TimedOut as e:
            raise TimedOut(f"{e}; (found, wanted): {_differences(seen, want)}") from None
        return found

    async def items(
        self, path: str, check: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        """The items of a list endpoint once check accepts them."""
        seen: list[dict[str, Any]] = []

        async def probe() -> list[dict[str, Any]] | None:
            nonlocal seen
            seen = (await self.get(path))["items"]
            return seen if check(seen) else None

        try:
            await self.until(f"{path} to settle", probe)
        except TimedOut as e:
            raise TimedOut(f"{e}; last items: {seen}") from None
        return seen

    async def create(self, path: str, body: dict[str, Any], *, token: str | None = None) -> str:
        """A command that completes once recorded (no operation)."""
        reply = await self.api.post(path, body, token=token or self.api.alice)
        assert reply.status == 202, (path, reply.status, reply.body)
        assert reply.json()["operation_id"] is None, reply.body
        return await created(reply)

    async def start_operation(
        self,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        key: str | None = None,
    ) -> Reply:
        reply = await self.api.post(path, body, token=token or self.api.alice, key=key)
        assert reply.status == 202, (path, reply.status, reply.body)
        accepted = reply.json()
        assert accepted["operation_id"] is not None, reply.body
        assert reply.headers["location"] == f"/v1/operations/{accepted['operation_id']}"
        return reply

    async def finish(self, reply: Reply, kind: str) -> dict[str, Any]:
        """Wait for the operation the reply started; it must have succeeded."""
        location = reply.headers["location"]

        async def done() -> dict[str, Any] | None:
            op: dict[str, Any] = await self.get(location)
            return op if op["state"] in TERMINAL else None

        op: dict[str, Any] = await self.until(f"{kind} to finish", done)
        attributes = op["attributes"]
        assert op["state"] == "succeeded", (kind, attributes["error"], attributes["failed_step"])
        assert attributes["kind"] == kind
        assert attributes["resource_id"] == reply.json()["resource_id"]
        assert all(step["status"] == "done" for step in attributes["steps"]), attributes
        return op

    async def operation(
        self,
        path: str,
        kind: str,
        body: Any = None,
        *,
        token: str | None = None,
    ) -> dict[str, Any]:
        """POST a command that starts an operation and wait until it succeeded."""
        reply = await self.start_operation(path, body, token=token)
        return await self.finish(reply, kind)


def _differences(resource: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    attributes = resource.get("attributes", {})
    found = {k: resource.get("state") if k == "state" else attributes.get(k) for k in want}
    return {k: (found[k], v) for k, v in want.items() if found[k] != v}


async def make_fabric(
    flow: Flow, backend: Backend, tmp_path: Path, template: tuple[str, str]
) -> Fabric:
    """Two hosts on the backend's libvirt, one cluster-wide dir pool, a file
    image store, a VXLAN physical network, a template (downloaded by the
    effector) and alice's isolated network."""
    url, sha256 = template
    spec = fabric.FabricSpec(
        hosts=fabric.hosts(2, backend.uri),
        pools=(fabric.PoolSpec(url=str(tmp_path / "primary"), capacity_bytes=64 * GIB),),
        image_stores=(fabric.ImageStoreSpec(url=str(tmp_path / "secondary")),),
        physical_networks=(fabric.PhysicalNetworkSpec(),),
        templates=(
            fabric.TemplateSpec(
                url=url,
                size_bytes=4 << 20,
                os_type="linux",
                checksum=f"sha256:{sha256}",
                state="requested",
            ),
        ),
    )
    made = await fabric.build_http(flow.api, spec, admin=flow.api.admin)
    await flow.read(f"/v1/templates/{made.template}", state="Ready")
    # A subnet of its own: on a real libvirtd the network's bridge and DHCP
    # server exist for real, beside other tests' networks. Alice's, on the
    # zone's VXLAN physical network, which the API finds for her.
    rng = random.Random()
    cidr = f"10.{rng.randrange(200, 250)}.{rng.randrange(256)}.0/24"
    network = await flow.create(
        "/v1/networks", {"name": "net", "zone_id": made.zone, "cidr": cidr, "isolation": "VXLAN"}
    )
    return dataclasses.replace(made, networks=(network,))


# The test ------------------------------------------------------------------------


async def test_vm_lifecycle_over_http(
    api: Api, pipeline: Pipeline, backend: Backend, template_url: tuple[str, str], tmp_path: Path
) -> None:
    flow = Flow(api, pipeline)
    fabric = await make_fabric(flow, backend, tmp_path, template_url)

    async def host(host_id: str, **want: Any) -> dict[str, Any]:
        return await flow.read(f"/v1/hosts/{host_id}", token=api.admin, **want)

    async def pool(**want: Any) -> dict[str, Any]:
        return await flow.read(f"/v1/storage-pools/{fabric.pool}", token=api.admin, **want)

    # Deploy -> Running, on one of the hosts, with a NIC and its address.
    body = {
        "name": "web",
        "zone_id": fabric.zone,
        "template_id": fabric.template,
        "spec": {"cpus": 1, "ram_mb": 128, "root_disk_gb": 1},
        "network_ids": [fabric.network],
    }
    deploy = await flow.start_operation("/v1/vms", body, key="deploy-web")
    again = await api.post("/v1/vms", body, token=api.alice, key="deploy-web")
    assert again.status == 202 and again.json()["replayed"] is True
    assert again.json()["operation_id"] == deploy.json()["operation_id"]
    vm_id = deploy.json()["resource_id"]
    vm_path = f"/v1/vms/{vm_id}"
    await flow.finish(deploy, "vm.deploy")
    vm = await flow.read(vm_path, state="Running", reboot_pending=False)
    first_host = vm["attributes"]["host_id"]
    assert first_host in fabric.hosts
    other_host = next(h for h in fabric.hosts if h != first_host)
    assert vm["account"] == "alice" and vm["name"] == "web"
    [root] = await flow.items(f"/v1/volumes?vm_id={vm_id}", lambda v: len(v) == 1)
    assert (root["state"], root["attributes"]["kind"], root["attributes"]["device_id"]) == (
        "Attached", "root", 0
    )  # fmt: skip
    assert root["attributes"]["size_bytes"] == GIB
    assert vm["attributes"]["disks"] == {"0": root["id"]}
    [nic] = await flow.items(f"/v1/nics?vm_id={vm_id}", lambda n: len(n) == 1)
    ip_id = nic["attributes"]["ip_id"]
    ip = await flow.read(f"/v1/ip-addresses/{ip_id}", state="Associated", owner_id=vm_id)
    assert ip["attributes"]["address"] == nic["attributes"]["address"]
    # The VM's own view shows the same NIC and root volume, and where it runs.
    vm = await flow.read(vm_path, state="Running")
    [shown] = vm["attributes"]["nics"]
    assert (shown["id"], shown["address"], shown["mac"], shown["network_id"]) == (
        nic["id"], nic["attributes"]["address"], nic["attributes"]["mac"], fabric.network
    )  # fmt: skip
    [disk] = vm["attributes"]["volumes"]
    assert (disk["id"], disk["pool_id"], disk["device_id"]) == (root["id"], fabric.pool, 0)
    assert vm["attributes"]["pool_id"] == fabric.pool
    assert "placed" not in vm["attributes"]
    await host(first_host, cpus_used=1, ram_used_mb=128)
    await host(other_host, cpus_used=0, ram_used_mb=0)

    # Stop (graceful) -> Stopped, its host capacity given back.
    await flow.operation(f"{vm_path}/stop", "vm.stop", {})
    await flow.read(vm_path, state="Stopped", host_id=None, last_host_id=first_host)
    await host(first_host, cpus_used=0, reservations={})

    # Start -> Running again, on the host it last ran on.
    await flow.operation(f"{vm_path}/start", "vm.start", {})
    await flow.read(vm_path, state="Running", host_id=first_host)
    await host(first_host, cpus_used=1)

    # Reboot -> Running; while it runs, a stop is refused: 409 naming it.
    pipeline.effector.gate.clear()
    try:
        reboot = await flow.start_operation(f"{vm_path}/reboot")
        reboot_id = reboot.json()["operation_id"]
        refused = await api.post(f"{vm_path}/stop", {"forced": True}, token=api.alice)
        assert refused.status == 409, refused.body
        assert refused.content_type.startswith(PROBLEM)
        problem = refused.json()
        assert problem["status"] == 409
        assert problem["type"] == "urn:cloudengine:problem:conflict"
        assert problem["rule"] == "conflict"
        assert problem["instance"] == f"{vm_path}/stop"
        assert problem["request_id"] == refused.headers["x-request-id"]
        assert reboot_id in problem["detail"] and "vm.reboot" in problem["detail"]
        running = await flow.get(reboot.headers["location"])
        assert running["state"] in ("pending", "running")
    finally:
        pipeline.effector.gate.set()
    await flow.finish(reboot, "vm.reboot")
    await flow.read(vm_path, state="Running", reboot_pending=False, reboot_error=None)

    # Migrate (an administrator's command) to the host the caller names.
    migrate = await flow.operation(
        f"{vm_path}/migrate", "vm.migrate", {"host_id": other_host}, token=api.admin
    )
    assert migrate["attributes"]["chosen_host_id"] == other_host
    assert migrate["attributes"]["params"]["source_host_id"] == first_host
    await flow.read(vm_path, state="Running", host_id=other_host, migration_target_id=None)
    await host(other_host, cpus_used=1, reservations={vm_id: {"cpus": 1, "ram_mb": 128}})
    await host(first_host, cpus_used=0, reservations={})

    # Stop (forced) -> Stopped.
    await flow.operation(f"{vm_path}/stop", "vm.stop", {"forced": True})
    await flow.read(vm_path, state="Stopped", host_id=None, last_host_id=other_host)
    await host(other_host, cpus_used=0, reservations={})

    # A data volume: created (complete once recorded), then attached.
    volume = await flow.create(
        "/v1/volumes", {"name": "data", "zone_id": fabric.zone, "size_gb": 1}
    )
    volume_path = f"/v1/volumes/{volume}"
    await flow.read(volume_path, state="Allocated", vm_id=None)
    await flow.operation(f"{volume_path}/attach", "volume.attach", {"vm_id": vm_id})
    await flow.read(volume_path, state="Attached", vm_id=vm_id, device_id=1, size_bytes=GIB,
                    pool_id=fabric.pool)  # fmt: skip
    await flow.read(vm_path, state="Stopped", disks={"0": root["id"], "1": volume})
    await pool(reservations={root["id"]: GIB, volume: GIB})
    data_size = GIB

    if backend.real:
        # Snapshot at 1 GiB, found under /v1/snapshots?volume_id=.
        snap = await flow.operation(f"{volume_path}/snapshot", "volume.snapshot", {"name": "s1"})
        [snapshot] = await flow.items(
            f"/v1/snapshots?volume_id={volume}", lambda s: len(s) == 1 and s[0]["state"] == "Ready"
        )
        assert snapshot["name"] == "s1"
        assert snap["attributes"]["params"]["target_id"] == snapshot["id"]

        # Resize: 1 GiB -> 2 GiB, the pool's reservation with it.
        await flow.operation(f"{volume_path}/resize", "volume.resize", {"size_gb": 2})
        await flow.read(volume_path, state="Attached", size_bytes=2 * GIB, resize_to=None)
        await pool(reservations={root["id"]: GIB, volume: 2 * GIB})

        # Revert to the snapshot: the volume is as it was, 1 GiB again (qemu-img
        # restores the size too), still attached; the pool holds 1 GiB again.
        await flow.operation(
            f"{volume_path}/revert", "volume.revert", {"snapshot_id": snapshot["id"]}
        )
        await flow.read(volume_path, state="Attached", reverting_to=None, size_bytes=data_size,
                        last_error=None)  # fmt: skip
        await pool(reservations={root["id"]: GIB, volume: data_size})
        # What the effector did to the file, as qemu-img sees it.
        image = await asyncio.to_thread(_image_info, tmp_path / "primary" / f"{volume}.qcow2")
        assert image["virtual-size"] == data_size
        assert [s["name"] for s in image.get("snapshots", [])] == [
            backend.names.snapshot(uuid.UUID(snapshot["id"]))
        ]
        # And it can grow again (a size the record had wrong was refused as no growth).
        await flow.operation(f"{volume_path}/resize", "volume.resize", {"size_gb": 2})
        data_size = 2 * GIB
        await flow.read(volume_path, state="Attached", size_bytes=data_size, resize_to=None)

    # Detach: the volume is Ready on its own, the VM keeps its root disk.
    await flow.operation(f"{volume_path}/detach", "volume.detach")
    await flow.read(volume_path, state="Ready", vm_id=None, device_id=None)
    await flow.read(vm_path, state="Stopped", disks={"0": root["id"]})

    # Destroy -> Destroyed, recover -> Stopped, destroy again.
    await flow.operation(f"{vm_path}/destroy", "vm.destroy")
    await flow.read(vm_path, state="Destroyed", host_id=None)
    await flow.operation(f"{vm_path}/recover", "vm.recover")
    await flow.read(vm_path, state="Stopped", host_id=None)
    await flow.operation(f"{vm_path}/destroy", "vm.destroy")
    await flow.read(vm_path, state="Destroyed")
    for host_id in fabric.hosts:
        await host(host_id, cpus_used=0, ram_used_mb=0, reservations={})

    # Expunge: gone for good, what the deploy made given back; the data
    # volume (detached) outlives it.
    await flow.operation(f"{vm_path}/expunge", "vm.expunge")
    await flow.read(vm_path, state="Expunged", host_id=None)
    await flow.read(f"/v1/volumes/{root['id']}", state="Destroyed", vm_id=None)
    await flow.read(f"/v1/nics/{nic['id']}", state="Released")
    await flow.read(f"/v1/ip-addresses/{ip_id}", state="Released")
    await flow.items(
        f"/v1/ip-addresses?network_id={fabric.network}",
        lambda ips: all(i["state"] == "Released" for i in ips),
    )
    await flow.read(volume_path, state="Ready", vm_id=None, size_bytes=data_size)
    await pool(reservations={volume: data_size})
    for host_id in fabric.hosts:
        await host(host_id, cpus_used=0, ram_used_mb=0, reservations={})
    # Not visible through the API: the effector undefined the domain.
    assert await asyncio.to_thread(_domain_absent, backend.uri, uuid.UUID(vm_id))

    # The history, in order, from the log: every step above and nothing
    # of the refused stop. (drift_observed events would be the reconciler's
    # own findings, recorded whenever it runs: not part of this history.)
    events = [e for e in (await flow.get(f"{vm_path}/events"))["items"]
              if e["event"] != "drift_observed"]  # fmt: skip
    expected = [
        "created", "placed", "disk_attached", "start_requested", "started",  # deploy
        "stop_requested", "stopped",  # stop
        "start_requested", "started",  # start
        "rebooted", "reboot_completed",  # reboot
        "migration_requested", "migration_completed",  # migrate
        "stop_requested", "stopped",  # stop (forced)
        "disk_attached", "disk_detached",  # the data volume
        "destroyed", "recovered", "destroyed",
        "expunge_requested", "expunged", "disk_detached",  # the root disk
    ]  # fmt: skip
    assert [e["event"] for e in events] == expected
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    versions = [e["version"] for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert versions[0] == 1
    assert all(e["aggregate_id"] == vm_id and e["aggregate_type"] == "vm" for e in events)
    assert events[0]["actor"].startswith("api:alice:")
    assert events[0]["data"]["name"] == "web"
    attached, detached = events[15], events[16]
    assert attached["data"]["volume_id"] == volume and attached["data"]["device"] == 1
    assert detached["data"]["volume_id"] == volume

    # Every operation succeeded, listed oldest first.
    vm_kinds = ["vm.deploy", "vm.stop", "vm.start", "vm.reboot", "vm.migrate", "vm.stop",
                "vm.destroy", "vm.recover", "vm.destroy", "vm.expunge"]  # fmt: skip
    volume_kinds = ["volume.attach", "volume.detach"]
    if backend.real:
        volume_kinds[1:1] = ["volume.snapshot", "volume.resize", "volume.revert", "volume.resize"]
    for resource_id, kinds in ((vm_id, vm_kinds), (volume, volume_kinds)):
        ops = await flow.items(f"/v1/operations?resource_id={resource_id}", _count(len(kinds)))
        assert [(o["attributes"]["kind"], o["state"]) for o in ops] == [
            (k, "succeeded") for k in kinds
        ]


def _count(n: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda items: len(items) == n


def _image_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def _domain_absent(uri: str, vm_id: uuid.UUID) -> bool:
    conn = libvirt.open(uri)
    try:
        conn.lookupByUUIDString(str(vm_id))
    except libvirt.libvirtError as e:
        return bool(e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)
    finally:
        conn.close()
    return False
