"""Reconciler against the real qemu:///system: domains changed behind the
engine's back are reported as drift. The engine's side is a small in-memory
stand-in for the read models (the real ReadModels is tested with PostgreSQL
elsewhere); every libvirt object is named with the test's prefix."""

import asyncio
import contextlib
import gc
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import msgspec
import pytest

from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.effectors.compute.driver import ComputeDriver
from cloud_engine.effectors.compute.spec import DomainSpec
from cloud_engine.effectors.desired import HostView, VmSize, VmView, VolumeView
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.own_acts import OwnActs
from cloud_engine.effectors.reconciler import Reconciler, start_libvirt_event_loop
from cloud_engine.effectors.storage.pools import ensure_pool
from cloud_engine.effectors.storage.spec import PoolSpec, VolumeSpec
from cloud_engine.effectors.storage.volumes import StorageDriver

pytestmark = pytest.mark.libvirt

ZONE = uuid.uuid4()
MiB = 1024 * 1024


class FakeReadModels:
    """hosts(), where() and where_in() over views held in memory."""

    def __init__(self, hosts: list[HostView]) -> None:
        self._hosts = hosts
        self.views: dict[str, list[Any]] = {"vm": [], "volume": []}

    async def hosts(self, zones):
        return [h for h in self._hosts if zones is None or h.zone_id in zones]

    async def where(self, cls, aggregate_type, field, value):
        return [
            v
            for v in self.views.get(aggregate_type, [])
            if isinstance(v, cls) and getattr(v, field, None) == value
        ]

    async def where_in(self, cls, aggregate_type, field, values):
        return [v for value in values for v in await self.where(cls, aggregate_type, field, value)]


def host_view(uri: str) -> HostView:
    return HostView(
        id=uuid.uuid4(), version=1, name="h1", zone_id=ZONE, state="Up", libvirt_uri=uri
    )


def vm_view(vm_id: UUID, host: HostView, state: str = "Running") -> VmView:
    return VmView(
        id=vm_id,
        version=5,
        name="web",
        zone_id=ZONE,
        state=state,
        spec=VmSize(cpus=1, ram_mb=64, root_disk_gb=1),
        host_id=host.id,
    )


class Published(list[EffectorResult]):
    async def __call__(self, result: EffectorResult) -> None:
        self.append(result)


def reconciler(read_models, published, hypervisor_for, **kw) -> Reconciler:
    return Reconciler(
        read_models,
        published,
        zones=frozenset({ZONE}),
        effector="effector-test",
        hypervisor_for=hypervisor_for,
        **kw,
    )


def running_domain(hypervisor: Hypervisor, name_prefix: str) -> UUID:
    vm_id = uuid.uuid4()
    driver = ComputeDriver(hypervisor, poll_interval_s=0.05)
    spec = DomainSpec(uuid=vm_id, name=f"{name_prefix}vm-{vm_id.hex[:12]}", vcpus=1, memory_mb=64)
    driver.define(spec)
    driver.start(vm_id)
    return vm_id


def about(results: list[EffectorResult], aggregate_id: UUID) -> list[EffectorResult]:
    # The libvirtd is shared: other tests' domains show up as unknown here.
    return [r for r in results if r.aggregate_id == aggregate_id]


async def test_a_domain_destroyed_behind_the_engines_back_is_vm_state_drift(
    hypervisor, libvirt_uri, name_prefix
):
    host = host_view(libvirt_uri)
    fake = FakeReadModels([host])
    vm_id = running_domain(hypervisor, name_prefix)
    fake.views["vm"].append(vm_view(vm_id, host))
    published = Published()
    rec = reconciler(fake, published, lambda uri: hypervisor, names=Names(prefix=name_prefix))

    assert about(await rec.reconcile_once(), vm_id) == []

    hypervisor.conn.lookupByUUID(vm_id.bytes).destroy()
    results = about(await rec.reconcile_once(), vm_id)
    assert len(results) == 1
    drift = results[0]
    assert drift.kind == "drift.vm_state"
    assert (drift.observed, drift.expected) == ("shutoff", "running")
    assert (drift.outcome, drift.host_id, drift.effector) == ("succeeded", host.id, "effector-test")
    assert drift in published

    # Reported again next round: the same operation, recorded once by the engine.
    (again,) = about(await rec.reconcile_once(), vm_id)
    assert again.work_id == drift.work_id


async def test_a_domain_the_engine_does_not_know_is_reported_with_its_name(
    hypervisor, libvirt_uri, name_prefix
):
    host = host_view(libvirt_uri)
    stray = running_domain(hypervisor, name_prefix)
    published = Published()
    rec = reconciler(FakeReadModels([host]), published, lambda uri: hypervisor)

    (drift,) = about(await rec.reconcile_once(), stray)
    assert drift.kind == "drift.unknown_domain"
    assert drift.observed == f"running name={name_prefix}vm-{stray.hex[:12]}"
    assert drift.host_id == host.id
    assert about(published, stray) == [drift]


async def test_a_stopped_vm_keeps_its_domain_on_its_last_host_without_drift(
    hypervisor, libvirt_uri, name_prefix
):
    host = host_view(libvirt_uri)
    fake = FakeReadModels([host])
    vm_id = running_domain(hypervisor, name_prefix)
    ComputeDriver(hypervisor).destroy(vm_id)
    # Stopped: the engine moved host_id to last_host_id; the definition stays.
    stopped = vm_view(vm_id, host, "Stopped")
    fake.views["vm"].append(msgspec.structs.replace(stopped, host_id=None, last_host_id=host.id))
    rec = reconciler(fake, Published(), lambda uri: hypervisor)
    assert about(await rec.reconcile_once(), vm_id) == []

    ComputeDriver(hypervisor).start(vm_id)
    (drift,) = about(await rec.reconcile_once(), vm_id)
    assert (drift.kind, drift.observed, drift.expected) == ("drift.vm_state", "running", "shutoff")


async def test_an_unreachable_host_is_reported_after_down_after_rounds_once():
    host = host_view("qemu+tcp://127.0.0.1:1/system")
    published = Published()
    unreachable = Hypervisor(host.libvirt_uri, attempts=1)
    rec = reconciler(FakeReadModels([host]), published, lambda uri: unreachable, down_after=2)

    assert await rec.reconcile_once() == []
    (down,) = await rec.reconcile_once()
    assert (down.kind, down.aggregate_id, down.host_id) == ("host.unreachable", host.id, host.id)
    assert down.outcome == "succeeded"
    assert down.error and down.error_code
    assert published == [down]
    # Once per outage.
    assert await rec.reconcile_once() == []


class Counted(Hypervisor):
    """Counts its connects."""

    opened = 0

    def _open(self) -> Any:
        self.opened += 1
        return super()._open()


async def test_a_rounds_liveness_check_retries_its_connect_less_than_work_does():
    # The effector's shared connection retries 5 times for work; a round's
    # check of the host only connect_attempts times, and by default two
    # failed rounds report the host (the heartbeat must still be stale
    # before automation fences it).
    host = host_view("qemu+tcp://127.0.0.1:1/system")
    shared = Counted(host.libvirt_uri, attempts=5, base_delay=0.001)
    published = Published()
    rec = reconciler(FakeReadModels([host]), published, lambda uri: shared, connect_attempts=2)

    assert await rec.reconcile_once() == []
    assert shared.opened == 2
    (down,) = await rec.reconcile_once()
    assert down.kind == "host.unreachable" and shared.opened == 4
    with pytest.raises(HypervisorError):
        shared.call("work", lambda conn: None)
    assert shared.opened == 9


async def test_a_host_that_answers_again_resets_the_count(hypervisor, libvirt_uri):
    host = host_view("qemu+tcp://127.0.0.1:1/system")
    bad = Hypervisor(host.libvirt_uri, attempts=1)
    current = {"hv": bad}
    rec = reconciler(FakeReadModels([host]), Published(), lambda uri: current["hv"], down_after=2)

    assert await rec.reconcile_once() == []
    current["hv"] = hypervisor  # answers: the failure count starts over
    await rec.reconcile_once()
    current["hv"] = bad
    assert await rec.reconcile_once() == []
    (down,) = await rec.reconcile_once()
    assert down.kind == "host.unreachable"


async def test_attached_volumes_missing_or_of_another_size_are_volume_drift(
    hypervisor, libvirt_uri, name_prefix, pool_dir
):
    host = host_view(libvirt_uri)
    fake = FakeReadModels([host])
    vm_id = running_domain(hypervisor, name_prefix)
    fake.views["vm"].append(vm_view(vm_id, host))
    pool_id = uuid.uuid4()
    pool = f"{name_prefix}pool-{pool_id.hex[:12]}"
    ensure_pool(hypervisor, PoolSpec(name=pool, path=str(pool_dir)))
    right, wrong, missing = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    storage = StorageDriver(hypervisor)
    storage.create(VolumeSpec(pool=pool, name=f"{right}.qcow2", size_bytes=16 * MiB))
    storage.create(VolumeSpec(pool=pool, name=f"{wrong}.qcow2", size_bytes=16 * MiB))
    for vol_id, size in ((right, 16 * MiB), (wrong, 32 * MiB), (missing, 16 * MiB)):
        fake.views["volume"].append(
            VolumeView(
                id=vol_id,
                version=3,
                zone_id=ZONE,
                state="Attached",
                size_bytes=size,
                pool_id=pool_id,
                vm_id=vm_id,
            )
        )
    rec = reconciler(fake, Published(), lambda uri: hypervisor, names=Names(prefix=name_prefix))

    results = await rec.reconcile_once()
    assert about(results, right) == []
    (wrong_size,) = about(results, wrong)
    assert (wrong_size.kind, wrong_size.observed, wrong_size.expected) == (
        "drift.volume",
        f"capacity={16 * MiB}",
        f"capacity={32 * MiB}",
    )
    (gone,) = about(results, missing)
    assert (gone.kind, gone.observed) == ("drift.volume", "missing")


class Watching(msgspec.Struct):
    rec: Reconciler
    published: Published
    vm_id: UUID


@contextlib.asynccontextmanager
async def watching(libvirt_uri: str, name_prefix: str, **options: Any) -> AsyncIterator[Watching]:
    """A reconciler running its loop on lifecycle events (the periodic round
    far away), one running domain it knows of, the callback registered."""
    # Events reach only connections opened after the event loop is installed.
    start_libvirt_event_loop()
    watched = Hypervisor(libvirt_uri)
    try:
        host = host_view(libvirt_uri)
        fake = FakeReadModels([host])
        vm_id = running_domain(watched, name_prefix)
        fake.views["vm"].append(vm_view(vm_id, host))
        published = Published()
        rec = reconciler(
            fake, published, lambda uri: watched, interval_s=120.0, lifecycle_events=True, **options
        )
        stop = asyncio.Event()
        loop = asyncio.create_task(rec.run(stop))
        try:
            # The first round runs at once and registers the callback.
            for _ in range(100):
                if rec._watched:
                    break
                await asyncio.sleep(0.05)
            yield Watching(rec, published, vm_id)
        finally:
            stop.set()
            await asyncio.wait_for(loop, 10)
    finally:
        watched.close()


async def test_a_lifecycle_event_wakes_the_loop_before_the_interval(
    libvirt_uri, name_prefix, hypervisor
):
    async with watching(libvirt_uri, name_prefix) as w:
        assert about(w.published, w.vm_id) == []
        await asyncio.to_thread(lambda: hypervisor.conn.lookupByUUID(w.vm_id.bytes).destroy())
        async with asyncio.timeout(15):
            while not about(w.published, w.vm_id):
                await asyncio.sleep(0.05)
        # Each event wakes a round; rounds report the same operation.
        drifts = about(w.published, w.vm_id)
        assert {(d.kind, d.observed, d.work_id) for d in drifts} == {
            ("drift.vm_state", "shutoff", drifts[0].work_id)
        }


async def test_the_echo_of_the_effectors_own_act_does_not_wake_a_round(
    libvirt_uri, name_prefix, hypervisor
):
    # Events of a domain the effector is acting on are its own work's echo:
    # during a burst of starts they kept rounds running back to back.
    acts = OwnActs(window_s=3600.0)
    async with watching(libvirt_uri, name_prefix, own_acts=acts) as w:
        acts.begin(w.vm_id)
        await asyncio.to_thread(lambda: hypervisor.conn.lookupByUUID(w.vm_id.bytes).destroy())
        acts.end(w.vm_id)
        # libvirt's event names the domain (dom.UUID() on its thread):
        # recognised as the echo. (Rounds woken by the domain's own define
        # and start may still run: they are not the effector's.)
        async with asyncio.timeout(15):
            while w.rec.echoes_ignored == 0:
                await asyncio.sleep(0.05)
        # A round (the periodic one, here asked for) still sees the drift.
        await w.rec.reconcile_once()
        assert {d.observed for d in about(w.published, w.vm_id)} == {"shutoff"}


async def test_a_reconnect_lets_go_of_the_old_connection_and_its_events(libvirt_uri):
    # The callback held the old connection: it was never closed, and if
    # alive went on waking the reconciler beside the new one.
    start_libvirt_event_loop()
    hv = Hypervisor(libvirt_uri)
    rec = reconciler(
        FakeReadModels([host_view(hv.uri)]), Published(), lambda uri: hv, lifecycle_events=True
    )
    await rec.reconcile_once()
    first = weakref.ref(hv.conn)
    hv.close()  # as a transient error does: the next call reconnects
    await rec.reconcile_once()
    assert hv.conn is not first()
    gc.collect()
    assert first() is None, "the old connection is still held"
    assert len(rec._watched) == 1
    stop = asyncio.Event()
    stop.set()
    await rec.run(stop)  # stopped at once: it lets go of the callback
    assert rec._watched == {}
    newest = weakref.ref(hv.conn)
    hv.close()
    gc.collect()
    assert newest() is None, "the last connection is still held after the reconciler stopped"
