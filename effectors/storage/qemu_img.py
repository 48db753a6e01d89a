"""qemu-img, for what libvirt's storage API does not do on file-backed pools.

libvirt has no per-volume snapshot API (virDomainSnapshot needs a domain) and
cannot copy a file that is not a volume of some pool, so internal qcow2
snapshots and template conversion go through qemu-img on the host. That means
the driver runs on the hypervisor host itself, with write access to the pool
directories. qemu-img takes the image locks QEMU takes: touching the image of
a running domain fails loudly (QemuImgError) rather than corrupting it.
"""

from __future__ import annotations

import subprocess

import msgspec

from cloud_engine.effectors.storage.pools import StorageError

QEMU_IMG = "qemu-img"
# A full copy of a large template can take minutes; a hung NFS mount must not
# hang the effector for ever.
TIMEOUT_S = 3600.0


class QemuImgError(StorageError):
    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} failed ({returncode}): {stderr}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class Snapshot(msgspec.Struct, frozen=True):
    name: str
    id: str


class ImageInfo(msgspec.Struct, frozen=True, rename="kebab"):
    format: str
    virtual_size: int
    full_backing_filename: str | None = None
    snapshots: list[Snapshot] = msgspec.field(default_factory=list)


def run(*args: str, timeout: float = TIMEOUT_S) -> str:
    argv = [QEMU_IMG, *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuImgError(argv, None, str(e)) from e
    if proc.returncode != 0:
        raise QemuImgError(argv, proc.returncode, proc.stderr.strip())
    return proc.stdout


def info(path: str) -> ImageInfo:
    # --force-share: reading metadata must work while a domain has the image open.
    out = run("info", "--output=json", "--force-share", path)
    return msgspec.json.decode(out, type=ImageInfo)


def snapshot_names(path: str) -> list[str]:
    return [s.name for s in info(path).snapshots]


def snapshot(op: str, name: str, path: str) -> None:
    """op is -c (create), -a (apply) or -d (delete)."""
    run("snapshot", op, name, path)


def convert_qcow2(src: str, src_format: str, dst: str) -> None:
    run("convert", "-f", src_format, "-O", "qcow2", "-o", "compat=1.1", src, dst)


def grow(path: str, size_bytes: int) -> None:
    run("resize", "-f", "qcow2", path, str(size_bytes))
