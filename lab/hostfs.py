"""A host's files: its libvirt configuration, its "disk" (the directories bound
over /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt),
its name resolution, and the QEMU capabilities cache it starts with."""

from __future__ import annotations

import filecmp
import re
import shutil
from pathlib import Path

from cloud_engine.lab.model import Layout

SYSTEM_ETC = Path("/etc/libvirt")
# Under the shared directory: virtlockd's leases, one file per disk.
LOCKSPACE = ".ce-locks"
# Where libvirtd keeps what it probed from each QEMU binary.
CAPS_SUBDIR = Path("qemu/capabilities")
# The host's directories bound over the system paths (host dir name, path).
DISK = (
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
)
# Keys of the system qemu.conf the lab sets itself.
_OWN_QEMU_KEYS = (
    "user",
    "group",
    "namespaces",
    "cgroup_controllers",
    "remember_owner",
    "migration_address",
    "migration_host",
    "lock_manager",
)


def prepare(layout: Layout, name: str, index: int, *, wipe: bool) -> None:
    """Make the host's directories; wipe=True starts from an empty disk."""
    host_dir = layout.host_dir(name)
    if wipe:
        for sub in (*(d for d, _ in DISK), "local", "run"):
            shutil.rmtree(host_dir / sub, ignore_errors=True)
    # /run is a fresh tmpfs on every boot; the libvirt part of it too.
    shutil.rmtree(layout.run_dir(name), ignore_errors=True)
    for sub in (*(d for d, _ in DISK), "local", "run"):
        (host_dir / sub).mkdir(parents=True, exist_ok=True)
    layout.shared_dir.mkdir(parents=True, exist_ok=True)
    _write_config(layout, name, index)
    seed_caps(layout, name)


def _write_config(layout: Layout, name: str, index: int) -> None:
    etc = layout.host_dir(name) / "etc"
    # Only the daemons' settings: the system's domains, networks, pools and
    # secrets (its qemu/, storage/, secrets/) are not this host's.
    for conf in SYSTEM_ETC.glob("*.conf"):
        if conf.name != "qemu.conf":
            shutil.copyfile(conf, etc / conf.name)
    if (SYSTEM_ETC / "nwfilter").is_dir() and not (etc / "nwfilter").exists():
        shutil.copytree(SYSTEM_ETC / "nwfilter", etc / "nwfilter")
    address = layout.address(index)
    system_qemu = SYSTEM_ETC / "qemu.conf"
    kept = system_qemu.read_text() if system_qemu.exists() else ""
    own = re.compile(rf"^\s*({'|'.join(_OWN_QEMU_KEYS)})\s*=")
    lines = [line for line in kept.splitlines() if not own.match(line)]
    lines += [
        f"# cloud-engine lab host {name}: the system's settings above, these below.",
        # Started by hand, QEMU runs as root (scripts/libvirt-host does the same).
        'user = "root"',
        'group = "root"',
        # The host is already in its own mount namespace; QEMU's own one fails
        # there ("Kernel does not provide mount namespace").
        "namespaces = [ ]",
        # cgroup paths are named by domain id and name, which repeat across
        # hosts (both ends of a migration): hosts must not share them.
        "cgroup_controllers = [ ]",
        # Ownership is remembered in xattrs on the image; on shared storage two
        # hosts would count on the same file.
        "remember_owner = 0",
        # Incoming migrations listen on the underlay only, and a migration
        # without a URI is sent to the underlay address, not to whatever the
        # hostname resolves to.
        f'migration_address = "{address}"',
        f'migration_host = "{address}"',
        # Leases through virtlockd (qemu-lockd.conf): see below.
        'lock_manager = "lockd"',
    ]
    (etc / "qemu.conf").write_text("\n".join(lines) + "\n")
    (etc / "libvirtd.conf").write_text(
        f'host_uuid = "{layout.host_uuid(name)}"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
    )
    # Every disk under libvirt's lock manager, its leases in one directory
    # on the shared storage: a second QEMU for a disk that runs anywhere in
    # the lab is refused, whichever host asks (a lease is a lock on a file
    # named by the disk's path, which is the same on every host).
    locks = layout.shared_dir / LOCKSPACE
    locks.mkdir(parents=True, exist_ok=True)
    (etc / "qemu-lockd.conf").write_text(
        f'auto_disk_leases = 1\nrequire_lease_for_disks = 1\nfile_lockspace_dir = "{locks}"\n'
    )
    for daemon in ("virtlogd", "virtlockd"):
        (etc / f"{daemon}.conf").write_text(
            f'log_outputs = "3:file:/var/log/libvirt/{daemon}.log"\n'
        )


def write_names(layout: Layout, names: list[tuple[str, str]]) -> None:
    """Every host's /etc/hosts (all lab hosts by name) and resolv.conf.

    Written in place: a host binds these files at boot, and a bound file keeps
    its inode, so hosts that run see hosts added later."""
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost\n" + "".join(
        f"{address}\t{name}\n" for name, address in names
    )
    # No DNS server is reachable from a host: a query must fail at once
    # (nothing listens on 127.0.0.1:53 there) rather than time out.
    resolv = "# cloud-engine lab host: names are in /etc/hosts\nnameserver 127.0.0.1\n"
    for name, _ in names:
        host_dir = layout.host_dir(name)
        host_dir.mkdir(parents=True, exist_ok=True)
        for file, text in (("hosts", hosts), ("resolv.conf", resolv)):
            path = host_dir / file
            with path.open("a+") as f:
                f.seek(0)
                if f.read() != text:
                    f.truncate(0)
                    f.write(text)


def seed_caps(layout: Layout, name: str) -> None:
    """Start the host with the capabilities already probed, so its libvirtd
    does not run QEMU again to learn them (seconds per binary)."""
    target = layout.host_dir(name) / "cache" / CAPS_SUBDIR
    target.mkdir(parents=True, exist_ok=True)
    if layout.caps_seed.is_dir():
        for xml in layout.caps_seed.glob("*.xml"):
            shutil.copy2(xml, target / xml.name)


def caps_seeded(layout: Layout) -> bool:
    return any(layout.caps_seed.glob("*.xml"))


def keep_caps(layout: Layout, name: str) -> bool:
    """Take the host's cache as the seed when it differs (first probe, or a
    QEMU or libvirt upgrade made libvirtd probe again). True if it changed."""
    source = layout.host_dir(name) / "cache" / CAPS_SUBDIR
    probed = sorted(source.glob("*.xml"))
    if not probed:
        return False
    seed = layout.caps_seed
    seed.mkdir(parents=True, exist_ok=True)
    same = {p.name for p in probed} == {p.name for p in seed.glob("*.xml")} and all(
        filecmp.cmp(p, seed / p.name, shallow=False) for p in probed
    )
    if same:
        return False
    for old in seed.glob("*.xml"):
        old.unlink()
    for xml in probed:
        shutil.copy2(xml, seed / f".{xml.name}.tmp")
        (seed / f".{xml.name}.tmp").rename(seed / xml.name)
    return True
