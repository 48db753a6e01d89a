"""The Executor on a real libvirtd (no Kafka): work items carried out against
qemu:///system, repeated as a redelivery would, and failures reported as
failed results (never raised)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import libvirt
import msgspec
import pytest

from cloud_engine.bus.work import WorkItem, work_id
from cloud_engine.effectors.desired import HostView, PoolView, VmSize, VmView, VolumeView
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.handlers.vm import VmPlan
from cloud_engine.effectors.handlers.volume import VolumePlan
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

MiB = 1024 * 1024
ZONE = uuid.UUID(int=1)


def work(kind: str, aggregate_id: uuid.UUID, version: int, *, forced: bool = False):
    return WorkItem(
        work_id=work_id(aggregate_id, version),
        kind=kind,
        aggregate_id=aggregate_id,
        version=version,
        position=version,
        correlation_id="cor-exec",
        forced=forced,
    )


def host_view(uri: str) -> HostView:
    return HostView(
        id=uuid.uuid4(), version=1, name="h", zone_id=ZONE, state="Enabled", libvirt_uri=uri
    )


def vm_plan(uri: str, *, ram_mb: int = 64) -> VmPlan:
    vm = VmView(
        id=uuid.uuid4(),
        version=3,
        name="vm",
        zone_id=ZONE,
        state="Starting",
        spec=VmSize(cpus=1, ram_mb=ram_mb, root_disk_gb=1),
    )
    return VmPlan(vm=vm, host=host_view(uri))


def domains_with_uuid(hv: Hypervisor, vm_id: uuid.UUID) -> list:
    return [d for d in hv.conn.listAllDomains(0) if d.UUIDString() == str(vm_id)]


@pytest.fixture
def executor(hypervisor: Hypervisor, name_prefix: str):
    # `hypervisor` removes whatever was left under name_prefix afterwards.
    ex = Executor("effector@test", names=Names(prefix=name_prefix), stop_timeout_s=5.0)
    try:
        yield ex
    finally:
        ex.close()


def test_vm_start_stop_expunge_are_idempotent(executor, hypervisor, libvirt_uri, name_prefix):
    plan = vm_plan(libvirt_uri)
    vm_id = plan.vm.id
    start = work("vm.start", vm_id, 3)

    results = [executor.run(start, plan) for _ in range(3)]

    assert [r.outcome for r in results] == ["succeeded"] * 3, [r.error for r in results]
    assert [r.observed for r in results] == ["running"] * 3
    assert {r.work_id for r in results} == {start.work_id}
    assert all(r.host_id == plan.host.id and r.version == 3 for r in results)
    assert all(r.kind == "vm.start" and r.correlation_id == "cor-exec" for r in results)
    doms = domains_with_uuid(hypervisor, vm_id)
    assert len(doms) == 1
    assert doms[0].name() == f"{name_prefix}vm-{vm_id.hex[:12]}"
    assert doms[0].isActive()
    assert doms[0].state()[0] == libvirt.VIR_DOMAIN_RUNNING

    stopped = executor.run(work("vm.stop", vm_id, 4, forced=True), plan)
    assert stopped.outcome == "succeeded", stopped.error
    assert stopped.observed == "shutoff"
    assert domains_with_uuid(hypervisor, vm_id)[0].state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

    expunge = work("vm.expunge", vm_id, 5)
    gone = [executor.run(expunge, plan) for _ in range(2)]
    assert [r.outcome for r in gone] == ["succeeded"] * 2, [r.error for r in gone]
    assert [r.observed for r in gone] == ["absent"] * 2
    assert domains_with_uuid(hypervisor, vm_id) == []


def test_vm_domain_stop_powers_off_a_destroyed_vm_and_undefines_an_expunged_one(
    executor, hypervisor, libvirt_uri
):
    plan = vm_plan(libvirt_uri)
    vm_id = plan.vm.id
    assert executor.run(work("vm.start", vm_id, 3), plan).outcome == "succeeded"
    destroyed = msgspec.structs.replace(
        plan, vm=msgspec.structs.replace(plan.vm, state="Destroyed", version=6)
    )
    stop = work("vm.domain_stop", vm_id, 6)
    results = [executor.run(stop, destroyed) for _ in range(2)]  # a repeat is a no-op
    assert [(r.outcome, r.observed) for r in results] == [("succeeded", "shutoff")] * 2, [
        r.error for r in results
    ]
    (domain,) = domains_with_uuid(hypervisor, vm_id)  # still defined: recoverable
    assert domain.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

    domain.create()  # running again, its VM expunged meanwhile
    expunged = msgspec.structs.replace(
        plan, vm=msgspec.structs.replace(plan.vm, state="Expunged", version=9)
    )
    gone = executor.run(work("vm.domain_stop", vm_id, 9), expunged)
    assert (gone.outcome, gone.observed) == ("succeeded", "absent"), gone.error
    assert domains_with_uuid(hypervisor, vm_id) == []


def test_migrate_between_hosts_of_one_hypervisor_and_to_an_unreachable_one(
    executor, hypervisor, libvirt_uri
):
    plan = vm_plan(libvirt_uri)
    vm_id = plan.vm.id
    assert executor.run(work("vm.start", vm_id, 3), plan).outcome == "succeeded"

    # Two engine hosts on one libvirtd: the domain already runs "there".
    twin = msgspec.structs.replace(plan, destination=host_view(libvirt_uri))
    moved = executor.run(work("vm.migrate", vm_id, 5), twin)
    assert (moved.outcome, moved.observed) == ("succeeded", "running"), moved.error

    far = msgspec.structs.replace(plan, destination=host_view("qemu+tcp://127.0.0.1:1/system"))
    refused = executor.run(work("vm.migrate", vm_id, 7), far)
    assert refused.outcome == "failed" and "127.0.0.1:1" in (refused.error or "")
    # The source keeps running it.
    assert domains_with_uuid(hypervisor, vm_id)[0].isActive()

    alone = executor.run(work("vm.migrate", vm_id, 9), plan)  # no destination
    assert alone.outcome == "failed" and "no migration target" in (alone.error or "")
    executor.run(work("vm.expunge", vm_id, 11), plan)


def qemu_info(path: Path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def test_volume_create_is_idempotent_and_delete_removes_the_file(
    executor, hypervisor, libvirt_uri, pool_dir
):
    host = host_view(libvirt_uri)
    pool = PoolView(
        id=uuid.uuid4(), version=1, zone_id=ZONE, state="Enabled", url=str(pool_dir / "p1")
    )
    volume = VolumeView(
        id=uuid.uuid4(),
        version=2,
        zone_id=ZONE,
        state="Creating",
        size_bytes=32 * MiB,
        pool_id=pool.id,
    )
    create = work("volume.create", volume.id, 2)

    results = [executor.run(create, VolumePlan(volume, pool, host)) for _ in range(3)]

    assert [r.outcome for r in results] == ["succeeded"] * 3, [r.error for r in results]
    assert [r.observed for r in results] == ["present"] * 3
    files = list((pool_dir / "p1").iterdir())
    assert [f.name for f in files] == [f"{volume.id}.qcow2"]
    info = qemu_info(files[0])
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 32 * MiB

    deleted = executor.run(work("volume.delete", volume.id, 3), VolumePlan(volume, pool, host))
    assert deleted.outcome == "succeeded", deleted.error
    assert deleted.observed == "absent"
    assert not files[0].exists()


def test_unreachable_host_gives_a_failed_result_with_libvirts_error(executor):
    plan = vm_plan("qemu+tcp://127.0.0.1:1/system")
    item = work("vm.start", plan.vm.id, 3)

    began = time.monotonic()
    result = executor.run(item, plan)
    elapsed = time.monotonic() - began

    assert result.outcome == "failed"
    assert result.observed is None
    assert result.error is not None
    assert "127.0.0.1:1" in result.error and "Connection refused" in result.error
    assert result.error_code == libvirt.VIR_ERR_SYSTEM_ERROR
    assert f"(libvirt error {result.error_code})" in result.error
    assert result.work_id == item.work_id
    # Connection refused is retried (with backoff) a bounded number of times.
    assert elapsed < 15, elapsed


def test_impossible_domain_gives_a_failed_result(executor, hypervisor, libvirt_uri):
    # 64 TiB of guest memory: libvirt/QEMU refuses to start it.
    plan = vm_plan(libvirt_uri, ram_mb=64 * 1024 * 1024)
    result = executor.run(work("vm.start", plan.vm.id, 3), plan)

    assert result.outcome == "failed"
    assert result.error and "memory" in result.error, result.error
    assert result.error_code is not None
    assert f"(libvirt error {result.error_code})" in result.error
    doms = domains_with_uuid(hypervisor, plan.vm.id)
    assert all(not d.isActive() for d in doms)


def qemu_io(path: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True
    )


def test_snapshot_then_revert_restores_the_data(executor, hypervisor, libvirt_uri, pool_dir):
    host = host_view(libvirt_uri)
    pool = PoolView(
        id=uuid.uuid4(), version=1, zone_id=ZONE, state="Enabled", url=str(pool_dir / "p2")
    )
    volume = VolumeView(
        id=uuid.uuid4(),
        version=2,
        zone_id=ZONE,
        state="Creating",
        size_bytes=16 * MiB,
        pool_id=pool.id,
    )
    created = VolumePlan(volume, pool, host)
    assert executor.run(work("volume.create", volume.id, 2), created).outcome == "succeeded"
    path = pool_dir / "p2" / f"{volume.id}.qcow2"
    assert qemu_io(path, "write -P 0xab 0 64k").returncode == 0

    snapshot_id = uuid.uuid4()
    take = work("snapshot.create", snapshot_id, 1)
    taken = [executor.run(take, VolumePlan(volume, pool, host, snapshot_id)) for _ in range(2)]
    assert [r.outcome for r in taken] == ["succeeded"] * 2, [r.error for r in taken]
    assert taken[0].aggregate_id == snapshot_id

    assert qemu_io(path, "write -P 0xcd 0 64k").returncode == 0
    reverting = msgspec.structs.replace(volume, version=5, reverting_to=snapshot_id)
    reverted = executor.run(work("volume.revert", volume.id, 5), VolumePlan(reverting, pool, host))
    assert reverted.outcome == "succeeded", reverted.error
    check = qemu_io(path, "read -P 0xab 0 64k")
    assert check.returncode == 0 and "Pattern verification failed" not in check.stdout

    unknown = msgspec.structs.replace(volume, version=6, reverting_to=uuid.uuid4())
    failed = executor.run(work("volume.revert", volume.id, 6), VolumePlan(unknown, pool, host))
    assert failed.outcome == "failed" and failed.error
