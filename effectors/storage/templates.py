"""Templates on disk: fetched from their http(s) URL into the zone's image
store (secondary storage), then copied once into each primary pool a volume
made from them lands on (the pool's base image), which the volumes back onto.

Fetching is safe to repeat and to interrupt: the image is streamed into a
`.partial` file, its checksum and format checked, and only then renamed into
place; an image already in place is not fetched again. A template is
refused when its bytes do not match the declared checksum or format, or when
a qcow2 template names a backing file (that would let an image read any file
on the host).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import msgspec
import structlog

from cloud_engine.effectors.storage import qemu_img
from cloud_engine.effectors.storage.pools import StorageError

log = structlog.get_logger("effectors.storage.templates")

CHUNK = 1024 * 1024
TIMEOUT_S = 60.0
# Bare hex digests are told apart by length, as CloudStack does.
_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}


class TemplateError(StorageError):
    """A template that cannot be fetched or used; the message says why."""


class TemplateImage(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    format: str
    virtual_size: int
    fetched: bool  # False when it was already in place


def store_dir(url: str) -> Path:
    """The directory of a file image store (a path, or a file:// URL)."""
    if url.startswith("/"):
        return Path(url)
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path.startswith("/"):
        return Path(parts.path)
    raise TemplateError(f"image store {url}: only file stores are served by this effector")


def image_path(store: Path, template_id: UUID, fmt: str) -> Path:
    return store / "template" / f"{template_id}.{fmt}"


def parse_checksum(checksum: str) -> tuple[str, str]:
    """(algorithm, hex digest) from "sha256:<hex>", "{SHA-256}<hex>" or bare hex."""
    text = checksum.strip()
    algorithm: str | None = None
    if text.startswith("{") and "}" in text:
        algorithm, text = text[1:].split("}", 1)
    elif ":" in text:
        algorithm, text = text.split(":", 1)
    digest = text.strip().lower()
    if algorithm is None:
        algorithm = _BY_LENGTH.get(len(digest))
    algorithm = (algorithm or "").lower().replace("-", "")
    if algorithm not in ("md5", "sha1", "sha256", "sha512"):
        raise TemplateError(f"checksum {checksum!r}: unknown algorithm")
    try:
        bytes.fromhex(digest)
    except ValueError:
        raise TemplateError(f"checksum {checksum!r}: not a hex digest") from None
    return algorithm, digest


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# An ISO 9660 image: its primary volume descriptor in sector 16 (of 2048
# bytes) starts with type 1 and "CD001".
_ISO_MAGIC_AT = 16 * 2048
_ISO_MAGIC = b"\x01CD001"


def is_iso9660(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(_ISO_MAGIC_AT)
        return f.read(len(_ISO_MAGIC)) == _ISO_MAGIC


def _check_image(path: Path, fmt: str, checksum: str | None) -> qemu_img.ImageInfo:
    if checksum is not None:
        algorithm, want = parse_checksum(checksum)
        got = _digest(path, algorithm)
        if got != want:
            raise TemplateError(f"checksum mismatch: {algorithm} is {got}, expected {want}")
    info = qemu_img.info(str(path))
    if fmt == "iso":
        # qemu-img sees an ISO as raw bytes: the file system says what it is.
        if info.format != "raw" or not is_iso9660(path):
            raise TemplateError("image is not an ISO 9660 image, the template says iso")
    elif info.format != fmt:
        raise TemplateError(f"image is {info.format}, the template says {fmt}")
    if info.full_backing_filename is not None:
        raise TemplateError("a template image must not have a backing file")
    return info


def _download(url: str, dest: Path, timeout_s: float) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TemplateError(f"{url}: only http(s) URLs are fetched")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, dest.open("wb") as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
    except urllib.error.HTTPError as e:
        raise TemplateError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise TemplateError(f"{url}: {reason}") from e


# Images in place this process checked: (path, inode, size, mtime, format) -> virtual size.
_checked: dict[tuple[str, int, int, int, str], int] = {}


def fetch(
    url: str,
    dest: Path,
    *,
    fmt: str,
    checksum: str | None,
    timeout_s: float = TIMEOUT_S,
) -> TemplateImage:
    """The template's image at dest, downloaded unless already there and sound."""
    if dest.exists():
        # Only a verified image is renamed into place, so it is not hashed
        # again (that would read the whole image for every volume made), and
        # one checked by this process is not inspected again while it is the
        # same file (qemu-img is a process start per volume).
        try:
            st = dest.stat()
            key = (str(dest), st.st_ino, st.st_size, st.st_mtime_ns, fmt)
            size = _checked.get(key)
            if size is None:
                size = _checked[key] = _check_image(dest, fmt, None).virtual_size
            return TemplateImage(path=str(dest), format=fmt, virtual_size=size, fetched=False)
        except (TemplateError, qemu_img.QemuImgError, OSError) as e:
            log.warning("template_image_replaced", path=str(dest), reason=str(e))
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        _download(url, partial, timeout_s)
        info = _check_image(partial, fmt, checksum)
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.info("template_fetched", url=url, path=str(dest), size=dest.stat().st_size)
    return TemplateImage(path=str(dest), format=fmt, virtual_size=info.virtual_size, fetched=True)
