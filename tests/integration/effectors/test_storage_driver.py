"""The storage driver on a real libvirtd, on real qcow2 files."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.storage.pools import (
    PoolMismatch,
    PoolMissing,
    UnknownPoolKind,
    ensure_pool,
    observe_pool,
    remove_pool,
)
from cloud_engine.effectors.storage.spec import PoolSpec, VolumeSpec
from cloud_engine.effectors.storage.volumes import (
    ShrinkRefused,
    SnapshotMissing,
    StorageDriver,
    VolumeMismatch,
    VolumeMissing,
)

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
CHUNK = 64 * 1024


def qemu_info(path: str | Path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def write_pattern(path: str | Path, byte: int, fmt: str = "qcow2") -> None:
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", f"write -P {byte:#x} 0 64k", str(path)],
        check=True,
        capture_output=True,
    )


def first_chunk(path: str | Path, scratch: Path) -> bytes:
    raw = scratch / "read.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(raw)], check=True)
    try:
        return raw.read_bytes()[:CHUNK]
    finally:
        raw.unlink()


def make_template(pool_dir: Path, size: str = "1M", byte: int = 0x5A) -> str:
    path = pool_dir / "template.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), size], check=True, capture_output=True
    )
    write_pattern(path, byte)
    return str(path)


@pytest.fixture
def pools(hypervisor: Hypervisor, name_prefix: str, pool_dir: Path) -> tuple[str, str]:
    a, b = f"{name_prefix}a", f"{name_prefix}b"
    ensure_pool(hypervisor, PoolSpec(name=a, path=str(pool_dir / "a")))
    ensure_pool(hypervisor, PoolSpec(name=b, path=str(pool_dir / "b")))
    return a, b


def volume_names(hv: Hypervisor, pool: str) -> list[str]:
    return hv.call(
        "list", lambda c: sorted(v.name() for v in c.storagePoolLookupByName(pool).listAllVolumes())
    )


def test_issue_path_on_real_qcow2_files(hypervisor, name_prefix, pool_dir, tmp_path):
    a, b = f"{name_prefix}a", f"{name_prefix}b"
    for name in (a, b):
        state = ensure_pool(hypervisor, PoolSpec(name=name, path=str(pool_dir / name)))
        assert state.exists and state.active
        assert state.path == str(pool_dir / name)
        assert (pool_dir / name).is_dir()
        assert hypervisor.call(
            "autostart", lambda c, n=name: c.storagePoolLookupByName(n).autostart()
        )
    template = make_template(pool_dir)
    driver = StorageDriver(hypervisor)

    # A thin overlay on the template: its data shows through.
    backed = driver.create(
        VolumeSpec(pool=a, name="root", size_bytes=2 * MiB, template_path=template)
    )
    assert backed.changed
    info = qemu_info(backed.volume.path)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 2 * MiB
    assert info["full-backing-filename"] == template
    assert backed.volume.backing_path == template
    assert first_chunk(backed.volume.path, tmp_path) == b"\x5a" * CHUNK

    # A full clone stands alone; one asked smaller than its template is grown to it.
    for name, size, want in (("full", 2 * MiB, 2 * MiB), ("full-small", MiB // 2, MiB)):
        spec = VolumeSpec(pool=a, name=name, size_bytes=size, template_path=template, clone="full")
        full = driver.create(spec)
        assert full.changed
        info = qemu_info(full.volume.path)
        assert "backing-filename" not in info
        assert info["virtual-size"] == want == full.volume.capacity_bytes
        assert first_chunk(full.volume.path, tmp_path) == b"\x5a" * CHUNK
        assert driver.create(spec).changed is False
    assert not any(p.name.endswith(".partial") for p in (pool_dir / a).iterdir())

    grown = driver.resize(a, "root", 4 * MiB)
    assert grown.changed and grown.volume.capacity_bytes == 4 * MiB
    assert qemu_info(grown.volume.path)["virtual-size"] == 4 * MiB

    path = grown.volume.path
    write_pattern(path, 0xAB)
    assert driver.snapshot(a, "root", "before-upgrade").changed
    assert driver.snapshots(a, "root") == ["before-upgrade"]
    write_pattern(path, 0xCD)
    assert first_chunk(path, tmp_path) == b"\xcd" * CHUNK
    reverted = driver.revert(a, "root", "before-upgrade")
    assert reverted.changed
    assert first_chunk(path, tmp_path) == b"\xab" * CHUNK
    assert reverted.volume.capacity_bytes == 4 * MiB

    copied = driver.copy(a, "root", b)
    assert copied.changed
    assert copied.volume.pool == b
    assert copied.volume.path == str(pool_dir / b / "root")
    info = qemu_info(copied.volume.path)
    assert "backing-filename" not in info  # standalone: the template was flattened in
    assert info["virtual-size"] == 4 * MiB
    subprocess.run(["qemu-img", "compare", "-U", path, copied.volume.path], check=True)
    assert driver.snapshots(b, "root") == []

    deleted = driver.delete(a, "root")
    assert deleted.changed and not deleted.volume.exists
    assert not os.path.exists(path)
    assert first_chunk(copied.volume.path, tmp_path) == b"\xab" * CHUNK


def repeat3(op):
    outcomes = [op() for _ in range(3)]
    assert [o.changed for o in outcomes] == [True, False, False]
    assert outcomes[1].volume == outcomes[2].volume
    return outcomes[-1]


def test_every_operation_repeated_changes_once(hypervisor, pools, pool_dir, tmp_path):
    a, b = pools
    driver = StorageDriver(hypervisor)
    template = make_template(pool_dir)
    specs = [
        VolumeSpec(pool=a, name="plain", size_bytes=MiB),
        VolumeSpec(pool=a, name="backed", size_bytes=2 * MiB, template_path=template),
        VolumeSpec(pool=a, name="full", size_bytes=2 * MiB, template_path=template, clone="full"),
    ]
    for spec in specs:
        state = repeat3(lambda s=spec: driver.create(s)).volume
        assert state.exists and state.capacity_bytes == spec.size_bytes
    assert volume_names(hypervisor, a) == ["backed", "full", "plain"]

    assert repeat3(lambda: driver.resize(a, "plain", 3 * MiB)).volume.capacity_bytes == 3 * MiB
    repeat3(lambda: driver.snapshot(a, "plain", "s1"))
    assert driver.snapshots(a, "plain") == ["s1"]
    # revert re-applies every time (changed=True), and every time lands on the same data.
    plain = pool_dir / "a" / "plain"
    write_pattern(plain, 0x11)
    driver.snapshot(a, "plain", "s2")
    for _ in range(3):
        write_pattern(plain, 0x22)
        assert driver.revert(a, "plain", "s2").changed
        assert first_chunk(plain, tmp_path) == b"\x11" * CHUNK
    repeat3(lambda: driver.delete_snapshot(a, "plain", "s1"))
    assert driver.snapshots(a, "plain") == ["s2"]

    repeat3(lambda: driver.copy(a, "backed", b, "backed-copy"))
    assert volume_names(hypervisor, b) == ["backed-copy"]

    gone = repeat3(lambda: driver.delete(a, "plain")).volume
    assert not gone.exists
    assert volume_names(hypervisor, a) == ["backed", "full"]


def test_shrink_is_refused_and_leaves_the_volume(hypervisor, pools):
    a, _ = pools
    driver = StorageDriver(hypervisor)
    driver.create(VolumeSpec(pool=a, name="v", size_bytes=4 * MiB))
    with pytest.raises(ShrinkRefused, match="shrinking it to 2097152 bytes"):
        driver.resize(a, "v", 2 * MiB)
    assert driver.observe(a, "v").capacity_bytes == 4 * MiB


def test_existing_volume_that_differs_from_the_spec_is_a_mismatch(hypervisor, pools, pool_dir):
    a, b = pools
    driver = StorageDriver(hypervisor)
    template = make_template(pool_dir)
    driver.create(VolumeSpec(pool=a, name="v", size_bytes=2 * MiB))
    with pytest.raises(VolumeMismatch, match="is 2097152 bytes, not 3145728"):
        driver.create(VolumeSpec(pool=a, name="v", size_bytes=3 * MiB))
    with pytest.raises(VolumeMismatch, match="backing file"):
        driver.create(VolumeSpec(pool=a, name="v", size_bytes=2 * MiB, template_path=template))
    driver.create(VolumeSpec(pool=b, name="v", size_bytes=MiB))
    with pytest.raises(VolumeMismatch, match="not qcow2 of 2097152"):
        driver.copy(a, "v", b)


def test_ensure_pool_twice_is_a_no_op(hypervisor, name_prefix, pool_dir):
    spec = PoolSpec(name=f"{name_prefix}p", path=str(pool_dir / "p"))
    first = ensure_pool(hypervisor, spec)
    uuid = hypervisor.call("uuid", lambda c: c.storagePoolLookupByName(spec.name).UUIDString())
    assert ensure_pool(hypervisor, spec) == first
    assert (
        hypervisor.call("uuid", lambda c: c.storagePoolLookupByName(spec.name).UUIDString()) == uuid
    )
    # Stopped behind our back: ensuring it again starts it.
    hypervisor.call("stop", lambda c: c.storagePoolLookupByName(spec.name).destroy())
    assert ensure_pool(hypervisor, spec) == first
    with pytest.raises(PoolMismatch, match="path"):
        ensure_pool(hypervisor, PoolSpec(name=spec.name, path=str(pool_dir / "elsewhere")))


def test_unknown_pool_kind_is_rejected(hypervisor, name_prefix, pool_dir):
    spec = PoolSpec(name=f"{name_prefix}nfs", kind="nfs", path=str(pool_dir))  # type: ignore[arg-type]
    with pytest.raises(UnknownPoolKind, match="unknown storage pool kind 'nfs'"):
        ensure_pool(hypervisor, spec)
    assert not observe_pool(hypervisor, spec.name).exists


def test_absent_things(hypervisor, pools, name_prefix):
    a, _ = pools
    driver = StorageDriver(hypervisor)
    state = driver.observe(a, "nothing")
    assert not state.exists and state.path is None and state.capacity_bytes == 0
    assert driver.delete(a, "nothing").changed is False
    with pytest.raises(VolumeMissing):
        driver.resize(a, "nothing", MiB)
    with pytest.raises(VolumeMissing):
        driver.snapshot(a, "nothing", "s")
    with pytest.raises(PoolMissing):
        driver.observe(f"{name_prefix}no-pool", "v")
    driver.create(VolumeSpec(pool=a, name="v", size_bytes=MiB))
    with pytest.raises(SnapshotMissing):
        driver.revert(a, "v", "never-taken")
    assert driver.delete_snapshot(a, "v", "never-taken").changed is False


def test_remove_pool_with_purge_deletes_volumes_and_directory(hypervisor, pools, pool_dir):
    a, _ = pools
    StorageDriver(hypervisor).create(VolumeSpec(pool=a, name="v", size_bytes=MiB))
    assert remove_pool(hypervisor, a, purge=True)
    assert not observe_pool(hypervisor, a).exists
    assert not (pool_dir / "a").exists()
    assert remove_pool(hypervisor, a) is False


def test_concurrent_ensure_pool_converges(hypervisor, libvirt_uri, name_prefix, pool_dir):
    spec = PoolSpec(name=f"{name_prefix}race", path=str(pool_dir / "race"))
    hvs = [Hypervisor(libvirt_uri) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(hvs)) as pool:
            states = list(pool.map(lambda hv: ensure_pool(hv, spec), hvs))
    finally:
        for hv in hvs:
            hv.close()
    assert all(s.exists and s.active for s in states)
