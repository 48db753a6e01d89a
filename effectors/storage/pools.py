"""Storage pools: define, build, start and autostart them, idempotently.

The seam is PoolBackend: everything that differs between pool kinds (the
pool XML, whether and how the pool is built, how an existing definition is
matched against a spec) lives in one backend per kind, registered in
BACKENDS. ensure_pool and friends only speak libvirt's generic pool API, so
an NFS ("netfs"), iSCSI or RBD pool is one more backend class, not a change
here.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Protocol

import libvirt
import structlog

from cloud_engine.effectors.hypervisor import Hypervisor
from cloud_engine.effectors.storage.spec import PoolSpec, PoolState

log = structlog.get_logger("effectors.storage")


class StorageError(Exception):
    """A storage request the driver refuses; libvirt failures stay HypervisorError."""


class UnknownPoolKind(StorageError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"unknown storage pool kind {kind!r} (known: {sorted(BACKENDS)})")
        self.kind = kind


class PoolMissing(StorageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"storage pool {name!r} does not exist")
        self.name = name


class PoolMismatch(StorageError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"storage pool {name!r} exists but differs from the spec: {why}")
        self.name = name


class PoolBackend(Protocol):
    def pool_xml(self, spec: PoolSpec) -> str:
        """The libvirt <pool> definition for spec."""
        ...

    def build_flags(self, spec: PoolSpec) -> int | None:
        """Flags for virStoragePool.build before the first start, None to skip it."""
        ...

    def mismatch(self, spec: PoolSpec, defined: ET.Element) -> str | None:
        """Why the defined pool XML does not serve spec, None when it does."""
        ...


class DirPool:
    """A directory on the host; volumes are files in it."""

    def pool_xml(self, spec: PoolSpec) -> str:
        root = ET.Element("pool", type="dir")
        ET.SubElement(root, "name").text = spec.name
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "path").text = os.path.abspath(spec.path)
        return ET.tostring(root, encoding="unicode")

    def build_flags(self, spec: PoolSpec) -> int | None:
        # Building a dir pool only creates the directory; an existing one is kept.
        return 0

    def mismatch(self, spec: PoolSpec, defined: ET.Element) -> str | None:
        if defined.get("type") != "dir":
            return f"type is {defined.get('type')!r}, not 'dir'"
        path = defined.findtext("target/path")
        want = os.path.abspath(spec.path)
        if path is None or os.path.normpath(path) != want:
            return f"path is {path!r}, not {want!r}"
        return None


BACKENDS: dict[str, PoolBackend] = {"dir": DirPool()}


def backend_for(kind: str) -> PoolBackend:
    try:
        return BACKENDS[kind]
    except KeyError:
        raise UnknownPoolKind(kind) from None


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def observe_pool(hv: Hypervisor, name: str, *, attempts: int | None = None) -> PoolState:
    def look(conn: libvirt.virConnect) -> PoolState:
        pool = _lookup(conn, name)
        if pool is None:
            return PoolState(name=name, exists=False, active=False)
        path = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
        return PoolState(name=name, exists=True, active=bool(pool.isActive()), path=path)

    return hv.call("observe pool", look, attempts=attempts)


def ensure_pool(hv: Hypervisor, spec: PoolSpec, *, attempts: int | None = None) -> PoolState:
    """Defined, built, started and autostarted; an existing pool that matches
    the spec is left as it is, one that does not is refused (PoolMismatch).
    attempts: as Hypervisor.call's (1 for a caller that comes back anyway:
    a build failing on the host's file system is a system error, which
    is retried, on a new connection, like a lost one)."""
    backend = backend_for(spec.kind)
    name = spec.name

    def check(pool: libvirt.virStoragePool) -> None:
        why = backend.mismatch(spec, ET.fromstring(pool.XMLDesc(0)))
        if why is not None:
            raise PoolMismatch(name, why)

    def define(conn: libvirt.virConnect) -> bool:
        pool = _lookup(conn, name)
        if pool is not None:
            check(pool)
            return False
        try:
            conn.storagePoolDefineXML(backend.pool_xml(spec), 0)
        except libvirt.libvirtError:
            # A concurrent ensure_pool may have defined it since we looked.
            pool = _lookup(conn, name)
            if pool is None:
                raise
            check(pool)
            return False
        return True

    if hv.call("define pool", define, attempts=attempts):
        log.info("pool_defined", pool=name, kind=spec.kind, path=spec.path)

    def start(conn: libvirt.virConnect) -> bool:
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            return False
        flags = backend.build_flags(spec)
        try:
            if flags is not None:
                pool.build(flags)
            pool.create(0)
        except libvirt.libvirtError:
            # Started concurrently by someone else: the goal is reached.
            if not pool.isActive():
                raise
            return False
        return True

    if hv.call("start pool", start, attempts=attempts):
        log.info("pool_started", pool=name)

    def autostart(conn: libvirt.virConnect) -> bool:
        pool = conn.storagePoolLookupByName(name)
        if pool.autostart():
            return False
        pool.setAutostart(1)
        return True

    hv.call("autostart pool", autostart, attempts=attempts)
    return observe_pool(hv, name, attempts=attempts)


def remove_pool(hv: Hypervisor, name: str, *, purge: bool = False) -> bool:
    """Stop and undefine the pool; with purge, delete its volumes and its
    storage (for a dir pool: the directory) first. False when it was absent."""

    def remove(conn: libvirt.virConnect) -> bool:
        pool = _lookup(conn, name)
        if pool is None:
            return False
        if purge:
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
        if pool.isActive():
            pool.destroy()
        if purge:
            pool.delete(0)
        pool.undefine()
        return True

    removed = hv.call("remove pool", remove)
    if removed:
        log.info("pool_removed", pool=name, purge=purge)
    return removed


def pool_path(hv: Hypervisor, name: str) -> str:
    """The directory a file-backed pool keeps its volumes in."""
    state = observe_pool(hv, name)
    if not state.exists:
        raise PoolMissing(name)
    if state.path is None:
        raise StorageError(f"storage pool {name!r} has no target path")
    return state.path
