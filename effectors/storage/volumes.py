"""qcow2 volumes in libvirt storage pools: observe first, act on the difference.

Every public StorageDriver call is idempotent: repeating it after it
succeeded returns changed=False and the same state (revert is the one
exception, see StorageDriver.revert). libvirt calls go through Hypervisor.call,
so its errors surface as HypervisorError; requests the driver refuses raise a
StorageError subclass.

Volume snapshots are qcow2 internal snapshots made with `qemu-img snapshot`:
libvirt snapshots belong to domains, and a dir pool offers no per-volume
snapshot call. They live inside the volume file, so they go with it on
delete, and a copy (which qemu-img convert flattens) does not carry them.
Full clones of a template file use qemu-img convert as well (see qemu_img.py).

libvirt's test driver (test:///...) keeps its pools and volumes in memory:
there is no file to copy into or to inspect. On it, a full clone of a
template is a volume of the template's virtual size created through libvirt
alone (the content cannot be represented there; the template image itself is
still fetched and checked into the image store), and what a volume backs
onto is read from libvirt's own record of that volume instead of qemu-img.
Real hosts take the file paths as before.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import libvirt
import structlog

from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError
from cloud_engine.effectors.storage import qemu_img
from cloud_engine.effectors.storage.pools import PoolMissing, StorageError, pool_path
from cloud_engine.effectors.storage.spec import Outcome, VolumeSpec, VolumeState

log = structlog.get_logger("effectors.storage")

T = TypeVar("T")


class VolumeMissing(StorageError):
    def __init__(self, pool: str, name: str) -> None:
        super().__init__(f"volume {name!r} does not exist in pool {pool!r}")


class ShrinkRefused(StorageError):
    def __init__(self, pool: str, name: str, capacity: int, size: int) -> None:
        super().__init__(
            f"volume {name!r} in pool {pool!r} is {capacity} bytes; shrinking it to "
            f"{size} bytes would destroy data and is refused"
        )


class SnapshotMissing(StorageError):
    def __init__(self, pool: str, name: str, snapshot: str) -> None:
        super().__init__(f"volume {name!r} in pool {pool!r} has no snapshot {snapshot!r}")


class VolumeMismatch(StorageError):
    def __init__(self, pool: str, name: str, why: str) -> None:
        super().__init__(f"volume {name!r} in pool {pool!r} exists but {why}")


def volume_xml(
    name: str,
    capacity_bytes: int,
    *,
    backing_path: str | None = None,
    backing_format: str = "qcow2",
) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity_bytes)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type="qcow2")
    # libvirt defaults to qcow2 v2 (compat 0.10), which cannot grow once it
    # holds an internal snapshot.
    ET.SubElement(target, "compat").text = "1.1"
    if backing_path is not None:
        backing = ET.SubElement(root, "backingStore")
        ET.SubElement(backing, "path").text = backing_path
        ET.SubElement(backing, "format", type=backing_format)
    return ET.tostring(root, encoding="unicode")


def parse_volume(pool: str, name: str, xml: str) -> VolumeState:
    root = ET.fromstring(xml)
    fmt = root.find("target/format")
    return VolumeState(
        pool=pool,
        name=name,
        exists=True,
        path=root.findtext("target/path"),
        capacity_bytes=int(root.findtext("capacity") or 0),
        format=fmt.get("type") if fmt is not None else None,
        backing_path=root.findtext("backingStore/path"),
    )


def _fresh(
    pool: libvirt.virStoragePool, look: Callable[[libvirt.virStoragePool], str | None]
) -> str | None:
    try:
        pool.refresh(0)
    except libvirt.libvirtError:
        # Refused while a volume is being built in it: as listed, then.
        return None
    return look(pool)


def _check_snapshot_name(snapshot: str) -> None:
    # qemu-img matches -a/-d arguments against snapshot ids as well as names,
    # so a numeric name could select another snapshot.
    if not snapshot or snapshot.isdigit():
        raise ValueError(f"snapshot name {snapshot!r} must be non-empty and not all digits")


class StorageDriver:
    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        # Pools of libvirt's test driver hold no files (see the module docstring).
        self.in_memory = urlsplit(hv.uri).scheme == "test"

    def _in_pool(self, action: str, pool: str, fn: Callable[[libvirt.virStoragePool], T]) -> T:
        try:
            return self.hv.call(action, lambda conn: fn(conn.storagePoolLookupByName(pool)))
        except HypervisorError as e:
            if e.code == libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise PoolMissing(pool) from e
            raise

    def observe(self, pool: str, name: str) -> VolumeState:
        def look(p: libvirt.virStoragePool) -> str | None:
            try:
                return str(p.storageVolLookupByName(name).XMLDesc(0))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return None
                raise

        xml = self._in_pool("observe volume", pool, look)
        if xml is None and not self.in_memory:
            # libvirt lists a dir pool's files as of its last refresh: in a
            # pool that hosts share, another host's libvirtd may have made
            # the file since.
            xml = self._in_pool("refresh and observe volume", pool, lambda p: _fresh(p, look))
        if xml is None:
            return VolumeState(pool=pool, name=name, exists=False)
        return parse_volume(pool, name, xml)

    def _existing(self, pool: str, name: str) -> VolumeState:
        state = self.observe(pool, name)
        if not state.exists or state.path is None:
            raise VolumeMissing(pool, name)
        return state

    def create(self, spec: VolumeSpec) -> Outcome:
        if spec.size_bytes <= 0:
            raise ValueError(f"volume size must be positive, not {spec.size_bytes}")
        current = self.observe(spec.pool, spec.name)
        if current.exists:
            self._check_matches(spec, current)
            return Outcome(changed=False, volume=current)
        template = os.path.abspath(spec.template_path) if spec.template_path else None
        if template is None:
            self._create_xml(spec.pool, volume_xml(spec.name, spec.size_bytes))
        else:
            tmpl = self._image_info(template)
            # The volume is never smaller than its template: that would cut the disk.
            size = max(spec.size_bytes, tmpl.virtual_size)
            if spec.clone == "backing":
                xml = volume_xml(spec.name, size, backing_path=template, backing_format=tmpl.format)
                self._create_xml(spec.pool, xml)
            else:
                self._full_clone(spec, template, tmpl, size)
        log.info(
            "volume_created",
            pool=spec.pool,
            volume=spec.name,
            size=spec.size_bytes,
            template=template,
            clone=spec.clone if template else None,
        )
        return Outcome(changed=True, volume=self.observe(spec.pool, spec.name))

    def _create_xml(self, pool: str, xml: str) -> None:
        self._in_pool("create volume", pool, lambda p: p.createXML(xml, 0))

    def _image_info(self, path: str) -> qemu_img.ImageInfo:
        """Format and virtual size of an image: from qemu-img, except for a
        volume of an in-memory pool, which exists only in libvirt's record."""
        if self.in_memory:
            known = self._volume_at(path)
            if known is not None and known.format is not None:
                return qemu_img.ImageInfo(format=known.format, virtual_size=known.capacity_bytes)
        return qemu_img.info(path)

    def _volume_at(self, path: str) -> VolumeState | None:
        def look(conn: libvirt.virConnect) -> VolumeState | None:
            try:
                vol = conn.storageVolLookupByPath(path)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return None
                raise
            return parse_volume(vol.storagePoolLookupByVolume().name(), vol.name(), vol.XMLDesc(0))

        return self.hv.call("look up volume by path", look)

    def _full_clone(
        self, spec: VolumeSpec, template: str, tmpl: qemu_img.ImageInfo, size: int
    ) -> None:
        if self.in_memory:
            # No file to convert into: the clone is libvirt's record of a
            # qcow2 volume of the same size (the test driver keeps no content).
            self._create_xml(spec.pool, volume_xml(spec.name, size))
            return
        final = os.path.join(pool_path(self.hv, spec.pool), spec.name)
        # Converted under a temporary name and renamed into place, so a crash
        # mid-copy never leaves a volume that looks complete; a retry
        # overwrites the leftover.
        partial = f"{final}.partial"
        qemu_img.convert_qcow2(template, tmpl.format, partial)
        if size > tmpl.virtual_size:
            qemu_img.grow(partial, size)
        os.replace(partial, final)
        # libvirt only learns of files it did not create on a refresh.
        self._in_pool("refresh pool", spec.pool, lambda p: p.refresh(0))

    def _check_matches(self, spec: VolumeSpec, current: VolumeState) -> None:
        def refuse(why: str) -> VolumeMismatch:
            return VolumeMismatch(spec.pool, spec.name, why)

        if current.format != "qcow2":
            raise refuse(f"is {current.format}, not qcow2")
        template = os.path.abspath(spec.template_path) if spec.template_path else None
        want_backing = template if spec.clone == "backing" else None
        if current.backing_path != want_backing:
            raise refuse(f"has backing file {current.backing_path!r}, not {want_backing!r}")
        capacity = current.capacity_bytes
        if capacity == spec.size_bytes:
            return
        # Created larger than asked because the template was larger.
        if (
            template is not None
            and capacity > spec.size_bytes
            and capacity == self._image_info(template).virtual_size
        ):
            return
        raise refuse(f"is {capacity} bytes, not {spec.size_bytes}")

    def resize(self, pool: str, name: str, size_bytes: int) -> Outcome:
        current = self._existing(pool, name)
        if size_bytes == current.capacity_bytes:
            return Outcome(changed=False, volume=current)
        if size_bytes < current.capacity_bytes:
            raise ShrinkRefused(pool, name, current.capacity_bytes, size_bytes)
        self._in_pool(
            "resize volume", pool, lambda p: p.storageVolLookupByName(name).resize(size_bytes, 0)
        )
        log.info(
            "volume_resized", pool=pool, volume=name, size=size_bytes, was=current.capacity_bytes
        )
        return Outcome(changed=True, volume=self.observe(pool, name))

    def delete(self, pool: str, name: str) -> Outcome:
        current = self.observe(pool, name)
        if not current.exists:
            return Outcome(changed=False, volume=current)

        def remove(p: libvirt.virStoragePool) -> None:
            try:
                p.storageVolLookupByName(name).delete(0)
            except libvirt.libvirtError as e:
                # Deleted by someone else since we looked: the goal is reached.
                if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise

        self._in_pool("delete volume", pool, remove)
        log.info("volume_deleted", pool=pool, volume=name)
        return Outcome(changed=True, volume=self.observe(pool, name))

    def copy(self, pool: str, name: str, to_pool: str, to_name: str | None = None) -> Outcome:
        """A standalone qcow2 copy in to_pool: backing chain flattened, internal
        snapshots not carried over."""
        dest = to_name or name
        source = self._existing(pool, name)
        current = self.observe(to_pool, dest)
        if current.exists:
            if current.capacity_bytes != source.capacity_bytes or current.format != "qcow2":
                raise VolumeMismatch(
                    to_pool,
                    dest,
                    f"is {current.format} of {current.capacity_bytes} bytes, not qcow2 of "
                    f"{source.capacity_bytes} bytes like {pool}/{name}",
                )
            return Outcome(changed=False, volume=current)
        xml = volume_xml(dest, source.capacity_bytes)

        def clone(conn: libvirt.virConnect) -> None:
            src = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            conn.storagePoolLookupByName(to_pool).createXMLFrom(xml, src, 0)

        self.hv.call("copy volume", clone)
        log.info("volume_copied", pool=pool, volume=name, to_pool=to_pool, to_volume=dest)
        return Outcome(changed=True, volume=self.observe(to_pool, dest))

    def snapshots(self, pool: str, name: str) -> list[str]:
        return qemu_img.snapshot_names(self._path(pool, name))

    def _path(self, pool: str, name: str) -> str:
        path = self._existing(pool, name).path
        assert path is not None  # _existing checked it
        return path

    def snapshot(self, pool: str, name: str, snapshot: str) -> Outcome:
        _check_snapshot_name(snapshot)
        path = self._path(pool, name)
        changed = snapshot not in qemu_img.snapshot_names(path)
        if changed:
            qemu_img.snapshot("-c", snapshot, path)
            log.info("volume_snapshot_created", pool=pool, volume=name, snapshot=snapshot)
        return Outcome(changed=changed, volume=self.observe(pool, name))

    def revert(self, pool: str, name: str, snapshot: str) -> Outcome:
        """Always re-applies the snapshot, so always changed=True: nothing
        tells whether the volume was written since the last revert. Repeating
        it is still safe; the volume ends up holding the snapshot's data (and
        its size at the time of the snapshot)."""
        _check_snapshot_name(snapshot)
        path = self._path(pool, name)
        if snapshot not in qemu_img.snapshot_names(path):
            raise SnapshotMissing(pool, name, snapshot)
        qemu_img.snapshot("-a", snapshot, path)
        log.info("volume_reverted", pool=pool, volume=name, snapshot=snapshot)
        return Outcome(changed=True, volume=self.observe(pool, name))

    def delete_snapshot(self, pool: str, name: str, snapshot: str) -> Outcome:
        _check_snapshot_name(snapshot)
        path = self._path(pool, name)
        changed = snapshot in qemu_img.snapshot_names(path)
        if changed:
            qemu_img.snapshot("-d", snapshot, path)
            log.info("volume_snapshot_deleted", pool=pool, volume=name, snapshot=snapshot)
        return Outcome(changed=changed, volume=self.observe(pool, name))
