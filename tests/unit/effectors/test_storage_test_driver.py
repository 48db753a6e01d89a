"""Template-backed volumes on libvirt's test driver, whose pools keep their
volumes in memory (no files): the base image and the overlay are made
through libvirt alone, and a VM starts on them. Runs in-process, no libvirtd;
qemu-img only for the template image in the (real) image store."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_engine.bus.work import WorkItem, work_id
from cloud_engine.effectors.desired import (
    HostView,
    ImageStoreView,
    PoolView,
    TemplateView,
    VmSize,
    VmView,
    VolumeView,
)
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.handlers.template import TemplateSource
from cloud_engine.effectors.handlers.vm import VmPlan
from cloud_engine.effectors.handlers.volume import VolumePlan
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.storage.templates import image_path
from cloud_engine.effectors.storage.volumes import StorageDriver

MiB = 1024 * 1024
GiB = 1024 * MiB
TEMPLATE_BYTES = 4 * MiB


@pytest.fixture(params=["default", "own"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """test:///default (one instance shared by the whole process) or a test
    driver instance of this test's own (test:///<file>)."""
    if request.param == "default":
        return "test:///default"
    node = tmp_path / "host.xml"
    node.write_text("<node/>\n")
    return f"test://{node}"


@pytest.fixture
def executor(uri: str) -> Iterator[Executor]:
    names = Names(prefix=f"ce-u{uuid.uuid4().hex[:8]}-")
    executor = Executor("effector@test", names=names, stop_timeout_s=1.0)
    try:
        yield executor
    finally:
        conn = executor.hypervisor(uri).conn
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(names.prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for pool in conn.listAllStoragePools(0):
            if pool.name().startswith(names.prefix):
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
                pool.destroy()
                pool.undefine()
        executor.close()


def volume_create(volume: VolumeView) -> WorkItem:
    return WorkItem(
        work_id=work_id(volume.id, volume.version),
        kind="volume.create",
        aggregate_id=volume.id,
        version=volume.version,
        position=1,
    )


def test_template_backed_root_volume_and_start(
    uri: str, executor: Executor, tmp_path: Path
) -> None:
    zone = uuid.uuid4()
    template = TemplateView(
        id=uuid.uuid4(),
        version=3,
        zone_id=zone,
        state="Ready",
        url="http://127.0.0.1:9/never-fetched.qcow2",  # already in the store
        format="qcow2",
    )
    store = ImageStoreView(
        id=uuid.uuid4(),
        version=1,
        zone_id=zone,
        state="Enabled",
        url=str(tmp_path / "secondary"),
        protocol="file",
    )
    image = image_path(tmp_path / "secondary", template.id, "qcow2")
    image.parent.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), str(TEMPLATE_BYTES)],
        check=True,
        capture_output=True,
    )
    source = TemplateSource(template=template, store=store)
    host = HostView(
        id=uuid.uuid4(), version=1, name="h", zone_id=zone, state="Enabled", libvirt_uri=uri
    )
    pool_dir = tmp_path / "primary"
    pool = PoolView(id=uuid.uuid4(), version=1, zone_id=zone, state="Up", url=str(pool_dir))
    volumes = [
        VolumeView(
            id=uuid.uuid4(),
            version=2,
            zone_id=zone,
            state="Creating",
            size_bytes=GiB,
            pool_id=pool.id,
            template_id=template.id,
            host_id=host.id,
        )
        for _ in range(2)
    ]

    for volume in [*volumes, volumes[0]]:  # the first one twice: a redelivery
        result = executor.run(volume_create(volume), VolumePlan(volume, pool, host, None, source))
        assert (result.outcome, result.observed, result.error) == ("succeeded", "present", None)

    # The executor's own connection: each test:///<file> open is a new instance.
    storage = StorageDriver(executor.hypervisor(uri))
    assert storage.in_memory
    names = executor.names
    base = storage.observe(names.pool(pool.id), names.template(template.id))
    assert base.exists and base.format == "qcow2" and base.backing_path is None
    assert base.capacity_bytes == TEMPLATE_BYTES  # the template's virtual size
    for volume in volumes:
        overlay = storage.observe(names.pool(pool.id), names.volume(volume.id))
        assert overlay.exists and overlay.format == "qcow2"
        assert overlay.backing_path == base.path
        assert overlay.capacity_bytes == GiB
    # Nothing was written outside libvirt's memory.
    assert not pool_dir.exists() or not any(pool_dir.iterdir())

    # A VM starts on the overlay.
    vm = VmView(
        id=uuid.uuid4(),
        version=6,
        name="vm",
        zone_id=zone,
        state="Starting",
        spec=VmSize(cpus=1, ram_mb=64, root_disk_gb=1),
        host_id=host.id,
        pool_id=pool.id,
    )
    disk = VolumeView(
        id=volumes[0].id,
        version=4,
        zone_id=zone,
        state="Attached",
        size_bytes=GiB,
        pool_id=pool.id,
        vm_id=vm.id,
        device_id=0,
        template_id=template.id,
        host_id=host.id,
    )
    start = WorkItem(
        work_id=work_id(vm.id, 6),
        kind="vm.start",
        aggregate_id=vm.id,
        version=6,
        position=2,
    )
    result = executor.run(start, VmPlan(vm=vm, host=host, disks=((disk, pool),)))
    assert (result.outcome, result.observed, result.error) == ("succeeded", "running", None)


def test_a_volume_smaller_than_its_template_is_still_refused(
    uri: str, executor: Executor, tmp_path: Path
) -> None:
    zone = uuid.uuid4()
    template = TemplateView(
        id=uuid.uuid4(), version=3, zone_id=zone, state="Ready", url="", format="qcow2"
    )
    store = ImageStoreView(
        id=uuid.uuid4(),
        version=1,
        zone_id=zone,
        state="Enabled",
        url=str(tmp_path),
        protocol="file",
    )
    image = image_path(tmp_path, template.id, "qcow2")
    image.parent.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), str(TEMPLATE_BYTES)],
        check=True,
        capture_output=True,
    )
    host = HostView(
        id=uuid.uuid4(), version=1, name="h", zone_id=zone, state="Enabled", libvirt_uri=uri
    )
    pool = PoolView(id=uuid.uuid4(), version=1, zone_id=zone, state="Up", url=str(tmp_path / "p"))
    volume = VolumeView(
        id=uuid.uuid4(),
        version=2,
        zone_id=zone,
        state="Creating",
        size_bytes=MiB,
        pool_id=pool.id,
        template_id=template.id,
    )
    source = TemplateSource(template=template, store=store)
    result = executor.run(volume_create(volume), VolumePlan(volume, pool, host, None, source))
    assert result.outcome == "failed"
    assert "smaller than its template's virtual size" in (result.error or "")


def test_real_hosts_keep_reading_image_files() -> None:
    # Only the test driver's in-memory pools take the libvirt-only path; the
    # connection is not even opened to decide that.
    assert not StorageDriver(Hypervisor("qemu:///system")).in_memory
    assert not StorageDriver(Hypervisor("qemu+ssh://host/system")).in_memory
    assert StorageDriver(Hypervisor("test:///default")).in_memory
