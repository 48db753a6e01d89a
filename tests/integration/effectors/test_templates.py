"""Templates for real: fetched over HTTP (a server on loopback) into a file
image store, copied once into a dir pool as the base image, and volumes
created on real qcow2 files that back onto it and read the template's data."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from template_server import make_template_image, qemu_img, qemu_io

from cloud_engine.bus.work import WorkItem, work_id
from cloud_engine.effectors.desired import (
    HostView,
    ImageStoreView,
    PoolView,
    TemplateView,
    VolumeView,
)
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.handlers.template import TemplateSource
from cloud_engine.effectors.handlers.volume import VolumePlan
from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.naming import Names

pytestmark = [pytest.mark.libvirt]

MiB = 1024 * 1024
ZONE = uuid.UUID(int=7)


def work(kind: str, aggregate_id: uuid.UUID, version: int) -> WorkItem:
    return WorkItem(
        work_id=work_id(aggregate_id, version),
        kind=kind,
        aggregate_id=aggregate_id,
        version=version,
        position=version,
    )


@pytest.fixture
def executor(hypervisor: Hypervisor, name_prefix: str) -> Iterator[Executor]:
    ex = Executor("effector@test", names=Names(prefix=name_prefix))
    try:
        yield ex
    finally:
        ex.close()


def template_view(url: str, checksum: str | None, fmt: str = "qcow2") -> TemplateView:
    return TemplateView(
        id=uuid.uuid4(),
        version=2,
        zone_id=ZONE,
        state="Downloading",
        url=url,
        format=fmt,
        checksum=checksum,
    )


def store_view(path: Path) -> ImageStoreView:
    return ImageStoreView(
        id=uuid.uuid4(), version=1, zone_id=ZONE, state="Enabled", url=str(path), protocol="file"
    )


def test_download_verifies_and_is_not_repeated(executor, served, tmp_path):
    _, digest = make_template_image(served.root, "tiny.qcow2")
    template = template_view(f"{served.base_url}/tiny.qcow2", f"sha256:{digest}")
    source = TemplateSource(template=template, store=store_view(tmp_path / "store"))
    item = work("template.download", template.id, 2)

    first = executor.run(item, source)
    again = executor.run(item, source)

    assert first.outcome == "succeeded", first.error
    assert (first.observed, again.observed) == ("fetched", "present")
    assert again.work_id == first.work_id
    assert served.requests == ["/tiny.qcow2"]
    stored = tmp_path / "store" / "template" / f"{template.id}.qcow2"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]


@pytest.mark.parametrize(
    ("url_path", "checksum", "fmt", "message"),
    [
        ("/tiny.qcow2", "sha256:" + "0" * 64, "qcow2", "checksum mismatch"),
        ("/missing.qcow2", None, "qcow2", "HTTP 404"),
        ("/tiny.qcow2", None, "raw", "image is qcow2, the template says raw"),
        ("/tiny.qcow2", "crc32:00", "qcow2", "unknown algorithm"),
        ("/tiny.qcow2", None, "iso", "not an ISO 9660 image"),
    ],
)
def test_bad_templates_fail_with_the_reason_and_leave_nothing(
    executor, served, tmp_path, url_path, checksum, fmt, message
):
    make_template_image(served.root, "tiny.qcow2")
    template = template_view(f"{served.base_url}{url_path}", checksum, fmt)
    source = TemplateSource(template=template, store=store_view(tmp_path / "store"))

    result = executor.run(work("template.download", template.id, 2), source)

    assert result.outcome == "failed"
    assert message in (result.error or "")
    left = tmp_path / "store" / "template"
    assert not left.exists() or list(left.iterdir()) == []


def test_an_iso_is_fetched_and_checked_as_iso_9660(executor, served, tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    (content / "readme.txt").write_text("an ISO\n")
    iso = served.root / "data.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-output", str(iso), "-volid", "DATA", str(content)],
        check=True,
        capture_output=True,
    )
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    template = template_view(f"{served.base_url}/data.iso", f"sha256:{digest}", "iso")
    source = TemplateSource(template=template, store=store_view(tmp_path / "store"))

    result = executor.run(work("template.download", template.id, 2), source)

    assert (result.outcome, result.observed) == ("succeeded", "fetched"), result.error
    stored = tmp_path / "store" / "template" / f"{template.id}.iso"
    assert stored.read_bytes() == iso.read_bytes()


def test_template_with_a_backing_file_is_refused(executor, served, tmp_path):
    # An image naming a backing file could make the host read any file.
    make_template_image(served.root, "base.qcow2")
    qemu_img(
        "create", "-f", "qcow2", "-F", "qcow2", "-b", str(served.root / "base.qcow2"),
        str(served.root / "sneaky.qcow2"),
    )  # fmt: skip
    template = template_view(f"{served.base_url}/sneaky.qcow2", None)
    source = TemplateSource(template=template, store=store_view(tmp_path / "store"))

    result = executor.run(work("template.download", template.id, 2), source)

    assert result.outcome == "failed"
    assert "must not have a backing file" in (result.error or "")


def test_no_image_store_is_a_failure_not_a_crash(executor, served):
    template = template_view(f"{served.base_url}/tiny.qcow2", None)
    result = executor.run(
        work("template.download", template.id, 2), TemplateSource(template=template, store=None)
    )
    assert result.outcome == "failed"
    assert "no enabled image store" in (result.error or "")


def test_volumes_from_a_template_back_onto_one_base_image_per_pool(
    executor, served, tmp_path, pool_dir, libvirt_uri
):
    _, digest = make_template_image(served.root, "tiny.qcow2")
    template = template_view(f"{served.base_url}/tiny.qcow2", digest)  # bare hex: sha256
    source = TemplateSource(template=template, store=store_view(tmp_path / "store"))
    host = HostView(
        id=uuid.uuid4(), version=1, name="h", zone_id=ZONE, state="Enabled", libvirt_uri=libvirt_uri
    )
    pool = PoolView(
        id=uuid.uuid4(), version=1, zone_id=ZONE, state="Enabled", url=str(pool_dir / "tp")
    )

    def volume(size: int) -> VolumeView:
        return VolumeView(
            id=uuid.uuid4(),
            version=2,
            zone_id=ZONE,
            state="Creating",
            size_bytes=size,
            pool_id=pool.id,
            template_id=template.id,
        )

    first, second = volume(8 * MiB), volume(4 * MiB)
    results = [
        executor.run(work("volume.create", v.id, 2), VolumePlan(v, pool, host, template=source))
        for v in (first, first, second)
    ]

    assert [r.outcome for r in results] == ["succeeded"] * 3, [r.error for r in results]
    # Fetched on demand (not downloaded first): the volume work does it once.
    assert served.requests == ["/tiny.qcow2"]
    base = pool_dir / "tp" / f"tpl-{template.id}.qcow2"
    assert sorted(p.name for p in (pool_dir / "tp").iterdir()) == sorted(
        [base.name, f"{first.id}.qcow2", f"{second.id}.qcow2"]
    )
    for v in (first, second):
        path = pool_dir / "tp" / f"{v.id}.qcow2"
        read = qemu_io(path, "qcow2", "read -P 0x5a 0 64k")
        assert read.returncode == 0 and "Pattern verification failed" not in read.stdout
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        decoded = msgspec.json.decode(info)
        assert decoded["backing-filename"] == str(base)
        assert decoded["virtual-size"] == v.size_bytes
    # Writing to one volume leaves the template's data in the other.
    assert (
        qemu_io(pool_dir / "tp" / f"{first.id}.qcow2", "qcow2", "write -P 0x11 0 64k").returncode
        == 0
    )
    read = qemu_io(pool_dir / "tp" / f"{second.id}.qcow2", "qcow2", "read -P 0x5a 0 64k")
    assert "Pattern verification failed" not in read.stdout

    small = volume(2 * MiB)
    refused = executor.run(
        work("volume.create", small.id, 2), VolumePlan(small, pool, host, template=source)
    )
    assert refused.outcome == "failed"
    assert "smaller than its template's virtual size" in (refused.error or "")
    assert not (pool_dir / "tp" / f"{small.id}.qcow2").exists()
