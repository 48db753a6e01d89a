"""A volume moved to a pool on another host (an offline migration's disks;
the seeds' MotionService), through the two hosts' libvirtds only.

libvirt copies a volume within one pool (createXMLFrom) but not between
hosts, so the move is three steps, each observed first:

1. in the source pool, a standalone copy `<name>.move`: createXMLFrom runs
   `qemu-img convert`, which flattens the backing chain (a volume made
   from a template backs onto the pool's base image, which the target pool
   may not have) and leaves internal snapshots behind;
2. that file's bytes streamed from the source libvirtd (virStorageVolDownload)
   to a volume of the same name in the target pool (virStorageVolUpload),
   created raw with the file's length, which the target's pool refresh then
   reads as the qcow2 it is;
3. once the copy holds the source's virtual size, the copy and the source
   are deleted.

The source is deleted last, so a volume still in its source pool has no
complete copy anywhere else for sure: a move resumed after a crash deletes
whatever is in the target and starts again; a volume only in the target
pool was moved already. Measured between lab hosts: a 1 GiB volume holding
2.3 MiB copied in 0.07 s (0.04 s convert, 0.03 s stream).
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET

import libvirt
import structlog

from cloud_engine.effectors.storage.pools import StorageError
from cloud_engine.effectors.storage.spec import Outcome
from cloud_engine.effectors.storage.volumes import StorageDriver, VolumeMissing, volume_xml

log = structlog.get_logger("effectors.storage")

CHUNK = 1 << 20


def _suffix(name: str) -> str:
    return f"{name}.move"


def move_volume(
    source: StorageDriver, source_pool: str, name: str, target: StorageDriver, target_pool: str
) -> Outcome:
    """name in target_pool (on target's host) and no longer in source_pool."""
    if source.in_memory or target.in_memory:
        raise StorageError("volumes move between hosts with files, not on libvirt's test driver")
    here = source.observe(source_pool, name)
    there = target.observe(target_pool, name)
    if not here.exists:
        if there.exists:
            return Outcome(changed=False, volume=there)
        raise VolumeMissing(source_pool, name)
    if there.exists:
        target.delete(target_pool, name)  # a copy cut short
    flat = _suffix(name)
    source.delete(source_pool, flat)  # a leftover of one cut short
    clone = volume_xml(flat, here.capacity_bytes)
    source.hv.call(
        "flatten volume",
        lambda c: c.storagePoolLookupByName(source_pool).createXMLFrom(
            clone, c.storagePoolLookupByName(source_pool).storageVolLookupByName(name), 0
        ),
    )
    length = _file_length(source, source_pool, flat)
    raw = (
        f"<volume><name>{name}</name><capacity unit='bytes'>{length}</capacity>"
        "<target><format type='raw'/></target></volume>"
    )
    target.hv.call(
        "create volume", lambda c: c.storagePoolLookupByName(target_pool).createXML(raw, 0)
    )
    _stream(source, source_pool, flat, target, target_pool, name)
    target.hv.call("refresh pool", lambda c: c.storagePoolLookupByName(target_pool).refresh(0))
    copied = target.observe(target_pool, name)
    if copied.format != "qcow2" or copied.capacity_bytes != here.capacity_bytes:
        raise StorageError(
            f"volume {name} copied to {target_pool} reads as {copied.format} of"
            f" {copied.capacity_bytes} bytes, not qcow2 of {here.capacity_bytes}"
        )
    source.delete(source_pool, flat)
    source.delete(source_pool, name)
    log.info("volume_moved", volume=name, source_pool=source_pool, target_pool=target_pool)
    return Outcome(changed=True, volume=copied)


def move_within(storage: StorageDriver, source_pool: str, name: str, target_pool: str) -> Outcome:
    """name in target_pool and no longer in source_pool, both pools of one
    host's libvirtd: one createXMLFrom into the target pool (qemu-img
    convert, the backing chain flattened), checked, then the source
    deleted. Observed first, like move_volume: a volume only in the target
    moved already, one in both was cut short and is copied again."""
    if storage.in_memory:
        raise StorageError("volumes move between pools with files, not on libvirt's test driver")
    here = storage.observe(source_pool, name)
    there = storage.observe(target_pool, name)
    if not here.exists:
        if there.exists:
            return Outcome(changed=False, volume=there)
        raise VolumeMissing(source_pool, name)
    if there.exists:
        storage.delete(target_pool, name)
    clone = volume_xml(name, here.capacity_bytes)
    storage.hv.call(
        "copy volume",
        lambda c: c.storagePoolLookupByName(target_pool).createXMLFrom(
            clone, c.storagePoolLookupByName(source_pool).storageVolLookupByName(name), 0
        ),
    )
    copied = storage.observe(target_pool, name)
    if copied.format != "qcow2" or copied.capacity_bytes != here.capacity_bytes:
        raise StorageError(
            f"volume {name} copied to {target_pool} reads as {copied.format} of"
            f" {copied.capacity_bytes} bytes, not qcow2 of {here.capacity_bytes}"
        )
    storage.delete(source_pool, name)
    log.info("volume_moved", volume=name, source_pool=source_pool, target_pool=target_pool)
    return Outcome(changed=True, volume=copied)


def _file_length(storage: StorageDriver, pool: str, name: str) -> int:
    xml = storage.hv.call(
        "describe volume",
        lambda c: str(c.storagePoolLookupByName(pool).storageVolLookupByName(name).XMLDesc(0)),
    )
    physical = ET.fromstring(xml).findtext("physical")
    if physical is None:
        raise StorageError(f"volume {name} in {pool}: libvirt gives no file length")
    return int(physical)


def _stream(
    source: StorageDriver,
    source_pool: str,
    name: str,
    target: StorageDriver,
    target_pool: str,
    to_name: str,
) -> None:
    """The bytes of source's file into target's volume, both connections at
    once (not retried piecemeal: a move cut short starts again)."""
    src_conn, dst_conn = source.hv.conn, target.hv.conn
    try:
        src_vol = src_conn.storagePoolLookupByName(source_pool).storageVolLookupByName(name)
        dst_vol = dst_conn.storagePoolLookupByName(target_pool).storageVolLookupByName(to_name)
        down, up = src_conn.newStream(0), dst_conn.newStream(0)
        src_vol.download(down, 0, 0, 0)
        dst_vol.upload(up, 0, 0, 0)
        try:
            while data := down.recv(CHUNK):
                if not isinstance(data, bytes):  # -2: would block (never, blocking)
                    raise StorageError(f"download of {name} from {source_pool} stalled")
                sent = 0
                while sent < len(data):
                    sent += up.send(data[sent:])
            down.finish()
            up.finish()
        except BaseException:
            for stream in (down, up):
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
            raise
    except libvirt.libvirtError as e:
        raise source.hv.error(f"copy volume {name} to {target.hv.uri}", e) from e
