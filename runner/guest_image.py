"""tiny-linux: the guest image `up` and the tests boot, built from Debian packages.

A qcow2 disk (64 MiB virtual, about 12 MiB of data) with an MBR, syslinux's
boot code and one FAT partition (label TINYLINUX) holding syslinux, the
kernel of Debian's `linux-image-amd64` and an initramfs: `busybox-static`,
the kernel modules a QEMU guest needs (virtio, ATA/SCSI CD-ROM, ISO 9660 and
vfat, the ACPI power button) and the files under guest/rootfs. The system
runs from that initramfs in RAM; it brings up every NIC with DHCP, serves
its page on port 80, powers off on the ACPI power button and reads a
cloud-init NoCloud seed (guest/rootfs/etc/init.d/nocloud says which
format). It boots with SeaBIOS from the disk, as any template does, so the
effector's domain XML needs nothing special.

Nothing is downloaded but Debian packages (`apt-get download`), and nothing
needs a mount or a loop device: the FAT file system is made and filled in
a file (dosfstools, mtools, syslinux's mtools installer). Building takes
about 10 s (plus the 70 MB kernel package once); the result is cached by
recipe (this file and guest/, hashed) in the cache directory
(`default_cache()`), which `./dev` fills before `up` and the tests, so
later runs only check that it is there. Beside it, the same system as a
bootable ISO (`tiny-linux.iso`, runner/guest_iso.py), which the ISO
template tests boot.

    python -m cloud_engine.runner.guest_image            build (or find) it, print its path
    python -m cloud_engine.runner.guest_image seed OUT.iso --hostname web-1 --user-data FILE
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec

from cloud_engine.effectors.compute import seed
from cloud_engine.runner import guest_iso

NAME = "tiny-linux"
IMAGE = "tiny-linux.qcow2"
ISO = "tiny-linux.iso"
MANIFEST = "tiny-linux.json"
DISK_MIB = 64
PARTITION_START = 2048  # sectors: the usual 1 MiB
SECTOR = 512
BOOT_LABEL = "TINYLINUX"
KERNEL_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# Every file in the image gets this time (2024-01-01): FAT cannot store 0.
EPOCH = 1704067200
GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
# The kernel modules the initramfs loads, in this order (each after its
# dependencies, which are found from the modules themselves). Disk and
# CD-ROM class drivers come before the host adapters, so the devices the
# adapters find are bound as they appear; ata_piix and ahci return only
# when their ports are probed, so a seed CD-ROM is there after them.
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_balloon",
    "virtio_rng",
    "crct10dif_generic",
    "sd_mod",
    "sr_mod",
    "virtio_scsi",
    "ata_piix",
    "ahci",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "evdev",
    "button",
)
# Debian packages the build runs (the guest's own come from apt-get download).
HOST_TOOLS = {
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "syslinux": "syslinux",
    str(MBR): "syslinux-common",
    "genisoimage": "genisoimage",
    "qemu-img": "qemu-utils",
}


class GuestImageError(RuntimeError):
    """The image cannot be built here; the message says why."""


class GuestImage(msgspec.Struct, frozen=True, kw_only=True):
    """A built image and what it was built from (its manifest)."""

    path: str
    sha256: str
    virtual_size: int
    file_size: int
    recipe: str
    kernel: str  # package=version
    busybox: str
    modules: tuple[str, ...]
    build_seconds: float
    iso: str = ""  # the same system as a bootable ISO (guest_iso.py)
    iso_sha256: str = ""


def recipe() -> str:
    """What the image is made from, hashed: this module and guest/."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    if not GUEST_DIR.is_dir():
        raise GuestImageError(f"{GUEST_DIR} is missing: the guest image is built from a checkout")
    for path in sorted(p for p in GUEST_DIR.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(GUEST_DIR)).encode() + b"\0")
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def default_cache() -> Path:
    """$CLOUD_ENGINE_GUEST_CACHE, else /var/cache/cloud-engine/guest for root
    (shared by every checkout, data directory and test session on the
    machine, and kept when .venv is rebuilt), else the user's cache."""
    if env := os.environ.get("CLOUD_ENGINE_GUEST_CACHE"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/cloud-engine/guest")
    import platformdirs

    return platformdirs.user_cache_path("cloud-engine") / "guest"


def cached(cache: Path | None = None) -> GuestImage | None:
    """The image of the current recipe, if the cache holds it."""
    manifest = (cache or default_cache()) / recipe() / MANIFEST
    try:
        image = msgspec.json.decode(manifest.read_bytes(), type=GuestImage)
    except (OSError, msgspec.DecodeError):
        return None
    return image if Path(image.path).is_file() and Path(image.iso).is_file() else None


def ensure(cache: Path | None = None, *, log: bool = False) -> GuestImage:
    """The image of the current recipe: from the cache, or built into it
    (one build at a time per cache: others wait for it and take its result)."""
    cache = cache or default_cache()
    if image := cached(cache):
        return image
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / "lock"):
        if image := cached(cache):
            return image
        key = recipe()
        if log:
            print(f"building the {NAME} guest image into {cache / key}", file=sys.stderr)
        image = _build(cache / key, cache / "debs")
        for old in cache.iterdir():  # earlier recipes' images
            if old.is_dir() and old.name not in (key, "debs"):
                shutil.rmtree(old, ignore_errors=True)
        return image


def copy_to(root: Path, cache: Path | None = None) -> GuestImage:
    """The image and its ISO in directory root (a data directory's): copied
    there from the cache once, then kept as they are (a template registered
    from one names its checksum), with their manifest beside them."""
    root.mkdir(parents=True, exist_ok=True)
    path, manifest, iso = root / IMAGE, root / MANIFEST, root / ISO
    placed: GuestImage | None = None
    if path.is_file() and manifest.is_file():
        try:
            placed = msgspec.json.decode(manifest.read_bytes(), type=GuestImage)
        except msgspec.DecodeError:
            placed = None
    if placed is not None and iso.is_file() and placed.iso == str(iso):
        return placed
    image = ensure(cache)
    if placed is None:
        _copy(Path(image.path), path)
        placed = msgspec.structs.replace(image, path=str(path))
    # The ISO beside it (copied in a data directory made before ISOs too;
    # the disk image there is kept as it is).
    _copy(Path(image.iso), iso)
    placed = msgspec.structs.replace(placed, iso=str(iso), iso_sha256=image.iso_sha256)
    manifest.write_bytes(msgspec.json.format(msgspec.json.encode(placed)) + b"\n")
    return placed


def _copy(source: Path, dest: Path) -> None:
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, dest)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(*args: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise GuestImageError(f"{args[0]}: not installed") from e
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip().splitlines()
        raise GuestImageError(
            f"{' '.join(args[:3])}: exit {e.returncode}: {detail[-1] if detail else ''}"
        ) from e
    return done.stdout


def ensure_host_tools() -> None:
    """Install the Debian packages the build (and make_seed) run, if missing."""
    missing = sorted(
        {pkg for tool, pkg in HOST_TOOLS.items() if not _have(tool)}
        | ({"apt"} if not shutil.which("apt-get") else set())
    )
    if not missing:
        return
    if os.geteuid() != 0:
        raise GuestImageError(
            f"the guest image needs {' '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    _apt("install", "-y", "-qq", "--no-install-recommends", *missing)


def _have(tool: str) -> bool:
    return Path(tool).exists() if tool.startswith("/") else shutil.which(tool) is not None


_updated = False


def _apt(*args: str, cwd: Path | None = None) -> str:
    """apt-get (or apt-cache for "depends"), after one `apt-get update` if
    it fails (a fresh machine has no package lists)."""
    global _updated
    command = ("apt-cache", *args) if args[0] == "depends" else ("apt-get", *args)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (1, 2):
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=cwd, check=False
        )
        if done.returncode == 0 and (args[0] != "depends" or "Depends:" in done.stdout):
            return done.stdout
        if attempt == 1 and not _updated and os.geteuid() == 0:
            _updated = True
            subprocess.run(("apt-get", "update", "-qq"), capture_output=True, env=env, check=False)
            continue
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise GuestImageError(
            f"{' '.join(command[:3])}: {detail[-1] if detail else 'nothing found'}"
        )
    raise AssertionError("unreachable")


def _download(package: str, debs: Path) -> Path:
    """The package's .deb in debs: downloaded (into debs) unless a copy is
    there, so a rebuild of the same recipe needs no network."""
    debs.mkdir(parents=True, exist_ok=True)
    if not sorted(debs.glob(f"{package}_*.deb")):
        # As root apt would hand the download to its _apt user, who may not
        # write here.
        sandbox = ("-o", "APT::Sandbox::User=root") if os.geteuid() == 0 else ()
        _apt("download", "-qq", *sandbox, package, cwd=debs)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise GuestImageError(f"apt-get download {package}: no .deb came")
    return found[-1]


def _kernel_package() -> str:
    """The versioned kernel package linux-image-amd64 currently means."""
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*)", _apt("depends", KERNEL_PACKAGE))
    if not match:
        raise GuestImageError(f"apt-cache depends {KERNEL_PACKAGE}: no linux-image-<version>")
    return match.group(1)


def _version(deb: Path) -> str:
    return _run("dpkg-deb", "--show", "--showformat=${Package}=${Version}", str(deb))


def _build(out: Path, debs: Path) -> GuestImage:
    started = time.monotonic()
    ensure_host_tools()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=out) as tmp:
        work = Path(tmp)
        kernel_deb = _download(_kernel_package(), debs)
        busybox_deb = _download(BUSYBOX_PACKAGE, debs)
        isolinux_deb = _download(guest_iso.PACKAGE, debs)
        kernel_root, busybox_root = work / "kernel", work / "busybox"
        isolinux_root = work / "isolinux"
        _run("dpkg-deb", "-x", str(kernel_deb), str(kernel_root))
        _run("dpkg-deb", "-x", str(busybox_deb), str(busybox_root))
        _run("dpkg-deb", "-x", str(isolinux_deb), str(isolinux_root))
        (vmlinuz,) = (kernel_root / "boot").glob("vmlinuz-*")
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = _module_order(kernel_root / "lib/modules" / version, MODULES)

        initrd = _initramfs(busybox_root / "bin/busybox", kernel_root, version, modules)
        boot = work / "boot"
        boot.mkdir()
        shutil.copyfile(vmlinuz, boot / "vmlinuz")
        (boot / "initrd.gz").write_bytes(initrd)
        shutil.copyfile(GUEST_DIR / "syslinux.cfg", boot / "syslinux.cfg")
        raw = work / "disk.raw"
        _disk(raw, boot)
        image = out / IMAGE
        partial = work / IMAGE
        _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(partial))
        os.replace(partial, image)
        try:
            iso = guest_iso.make_boot_iso(out / ISO, boot, isolinux_root, EPOCH)
        except guest_iso.GuestIsoError as e:
            raise GuestImageError(str(e)) from e
    info = msgspec.json.decode(_run("qemu-img", "info", "--output=json", str(image)))
    built = GuestImage(
        path=str(image),
        sha256=hashlib.sha256(image.read_bytes()).hexdigest(),
        virtual_size=int(info["virtual-size"]),
        file_size=image.stat().st_size,
        recipe=out.name,
        kernel=_version(kernel_deb),
        busybox=_version(busybox_deb),
        modules=tuple(p.name.removesuffix(".ko") for p in modules),
        build_seconds=round(time.monotonic() - started, 1),
        iso=str(iso),
        iso_sha256=hashlib.sha256(iso.read_bytes()).hexdigest(),
    )
    (out / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(built)) + b"\n")
    return built


def _module_name(path: Path | str) -> str:
    return Path(path).name.removesuffix(".ko").replace("-", "_")


def _depends(path: Path) -> list[str]:
    """A module's dependencies, from its .modinfo section ("depends=a,b")."""
    match = re.search(rb"\x00depends=([^\x00]*)\x00", path.read_bytes())
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def _module_order(base: Path, wanted: Sequence[str]) -> list[Path]:
    """The module files to load for wanted (built-in ones skipped), each
    after its dependencies."""
    files = {_module_name(p): p for p in base.rglob("*.ko")}
    builtin = {_module_name(line) for line in (base / "modules.builtin").read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in files:
            raise GuestImageError(f"kernel module {name} is neither built in nor shipped")
        for dep in _depends(files[name]):
            visit(dep)
        order.append(files[name])

    for name in wanted:
        visit(name)
    return order


class _Cpio:
    """An initramfs archive (cpio "newc"), written without root: device
    nodes and ownership are just fields."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._names: set[str] = set()
        self._ino = 1

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        if name in self._names:
            return
        parent = os.path.dirname(name)
        if parent and parent not in self._names:
            self.add(parent, stat.S_IFDIR | 0o755)
        self._names.add(name)
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, EPOCH, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]

    def bytes(self) -> bytes:
        trailer = b"TRAILER!!!\0"
        header = b"070701" + b"".join(
            b"%08X" % f for f in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(trailer), 0)
        )
        return b"".join([*self._parts, header, trailer, _pad(len(header) + len(trailer))])


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _initramfs(busybox: Path, kernel_root: Path, version: str, modules: list[Path]) -> bytes:
    cpio = _Cpio()
    for d in ("dev", "proc", "sys", "run", "tmp", "root", "boot", "mnt", "var/log", "etc"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    # The kernel gives init /dev/console as stdin and stdout before
    # anything mounts devtmpfs.
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    # The guest's own files first: they win over busybox's applet links.
    rootfs = GUEST_DIR / "rootfs"
    for path in sorted(rootfs.rglob("*")):
        name = str(path.relative_to(rootfs))
        if path.is_dir():
            cpio.add(name, stat.S_IFDIR | 0o755)
        else:
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            cpio.add(name, stat.S_IFREG | mode, path.read_bytes())
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    for applet in _run(str(busybox), "--list-full").split():
        cpio.add(applet, stat.S_IFLNK | 0o777, b"/bin/busybox")
    cpio.add("init", stat.S_IFLNK | 0o777, b"/bin/busybox")
    base = kernel_root / "lib/modules" / version
    lib = f"lib/modules/{version}"
    deps = []
    for path in modules:
        rel = str(path.relative_to(base))
        cpio.add(f"{lib}/{rel}", stat.S_IFREG | 0o644, path.read_bytes())
        needs = " ".join(
            str(m.relative_to(base)) for m in modules if _module_name(m) in _depends(path)
        )
        deps.append(f"{rel}: {needs}".rstrip())
    order = "".join(f"{p.relative_to(base)}\n" for p in modules)
    cpio.add(f"{lib}/load-order", stat.S_IFREG | 0o644, order.encode())
    # For modprobe in the guest's shell.
    cpio.add(f"{lib}/modules.dep", stat.S_IFREG | 0o644, ("\n".join(deps) + "\n").encode())
    return gzip.compress(cpio.bytes(), compresslevel=9, mtime=0)


def _chs(lba: int) -> bytes:
    """An MBR's cylinder/head/sector address (255 heads, 63 sectors)."""
    cylinder, head, sector = lba // (255 * 63), (lba // 63) % 255, lba % 63 + 1
    if cylinder > 1023:
        cylinder, head, sector = 1023, 254, 63
    return bytes((head, sector | ((cylinder >> 8) & 3) << 6, cylinder & 0xFF))


def _disk(raw: Path, boot: Path) -> None:
    """A raw disk: syslinux's MBR, one bootable FAT16 partition with the
    files of boot and syslinux installed in it."""
    total = DISK_MIB * 1024 * 1024 // SECTOR
    sectors = total - PARTITION_START
    part = raw.with_name("boot.img")
    _run(
        "mkfs.fat", "-F", "16", "-n", BOOT_LABEL, "-i", "7E1EC0DE", "-h", str(PARTITION_START),
        "-C", str(part), str(sectors * SECTOR // 1024),
    )  # fmt: skip
    files = sorted(boot.iterdir())
    for file in files:
        os.utime(file, (EPOCH, EPOCH))
    _run("mcopy", "-m", "-i", str(part), *map(str, files), "::/")
    _run("syslinux", "--install", str(part))
    entry = (
        b"\x80" + _chs(PARTITION_START) + b"\x0e" + _chs(total - 1)
        + struct.pack("<II", PARTITION_START, sectors)
    )  # fmt: skip
    mbr = MBR.read_bytes()[:440] + struct.pack("<I", 0x7E1EC0DE) + b"\0\0"
    mbr += entry + b"\0" * 48 + b"\x55\xaa"
    with raw.open("wb") as f:
        f.write(mbr)
        f.seek(PARTITION_START * SECTOR)
        with part.open("rb") as p:
            shutil.copyfileobj(p, f, 1024 * 1024)
        f.truncate(total * SECTOR)


def make_seed(
    path: Path,
    *,
    instance_id: str,
    hostname: str | None = None,
    user_data: str | bytes = b"",
    public_keys: Sequence[str] = (),
) -> Path:
    """A NoCloud seed (effectors/compute/seed.py, which the effector uses),
    after installing genisoimage if it is missing."""
    ensure_host_tools()
    try:
        return seed.make_seed(
            path,
            instance_id=instance_id,
            hostname=hostname,
            user_data=user_data,
            public_keys=public_keys,
        )
    except seed.SeedError as e:
        raise GuestImageError(str(e)) from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud_engine.runner.guest_image")
    parser.add_argument("--cache", type=Path, help="cache directory (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print nothing when it is cached")
    sub = parser.add_subparsers(dest="command")
    seed = sub.add_parser("seed", help="make a NoCloud seed ISO")
    seed.add_argument("out", type=Path)
    seed.add_argument("--instance-id", default=f"iid-{os.getpid()}-{int(time.time())}")
    seed.add_argument("--hostname")
    seed.add_argument("--user-data", type=Path, help="a #! script or #cloud-config file")
    seed.add_argument("--key", action="append", default=[], help="an SSH public key")
    args = parser.parse_args(argv)
    try:
        if args.command == "seed":
            user_data = args.user_data.read_bytes() if args.user_data else b""
            make_seed(
                args.out,
                instance_id=args.instance_id,
                hostname=args.hostname,
                user_data=user_data,
                public_keys=args.key,
            )
            print(args.out)
            return 0
        was_cached = cached(args.cache) is not None
        image = ensure(args.cache, log=True)
    except GuestImageError as e:
        print(f"guest image: {e}", file=sys.stderr)
        return 1
    if not (args.quiet and was_cached):
        print(
            f"{image.path}  {image.file_size / 2**20:.1f} MiB"
            f" ({image.virtual_size // 2**20} MiB virtual), {image.kernel}, {image.busybox}"
            + ("" if was_cached else f", built in {image.build_seconds} s")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
