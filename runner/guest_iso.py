"""tiny-linux as a bootable ISO: the same kernel and initramfs as the disk
image (runner/guest_image.py builds both), behind isolinux, for the tests
of ISO templates (a VM deployed from an ISO, an ISO inserted live).

An El Torito no-emulation image made with genisoimage (as the NoCloud
seeds are): isolinux.bin from Debian's `isolinux` package (fetched with
apt-get download like the kernel, not installed), ldlinux.c32 from
`syslinux-common` (which the disk image's build installs; both packages
come from one source version), and the disk image's syslinux.cfg as
isolinux.cfg. The system runs from its initramfs as from the disk; it
finds no TINYLINUX partition and so keeps no state across boots.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "isolinux"
ISOLINUX_BIN = Path("usr/lib/ISOLINUX/isolinux.bin")  # inside the package
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
VOLUME_ID = "TINYLINUX_LIVE"


class GuestIsoError(RuntimeError):
    """The ISO cannot be made; the message says why."""


def make_boot_iso(out: Path, boot: Path, isolinux_root: Path, epoch: int) -> Path:
    """A bootable ISO at out of boot's vmlinuz, initrd.gz and syslinux.cfg,
    with isolinux from isolinux_root (the package's files, extracted)."""
    isolinux = isolinux_root / ISOLINUX_BIN
    for needed in (isolinux, LDLINUX):
        if not needed.is_file():
            raise GuestIsoError(f"{needed} is missing")
    with tempfile.TemporaryDirectory(prefix="iso-", dir=out.parent) as tmp:
        tree = Path(tmp) / "tree"
        (tree / "isolinux").mkdir(parents=True)
        for name in ("vmlinuz", "initrd.gz"):
            shutil.copyfile(boot / name, tree / name)
        shutil.copyfile(boot / "syslinux.cfg", tree / "isolinux" / "isolinux.cfg")
        shutil.copyfile(isolinux, tree / "isolinux" / "isolinux.bin")
        shutil.copyfile(LDLINUX, tree / "isolinux" / "ldlinux.c32")
        for path in tree.rglob("*"):
            os.utime(path, (epoch, epoch))
        partial = Path(tmp) / out.name
        argv = [
            "genisoimage", "-quiet", "-output", str(partial), "-volid", VOLUME_ID,
            "-rational-rock", "-joliet", "-input-charset", "utf-8",
            "-eltorito-boot", "isolinux/isolinux.bin", "-eltorito-catalog", "isolinux/boot.cat",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(tree),
        ]  # fmt: skip
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True)
        except FileNotFoundError as e:
            raise GuestIsoError("genisoimage: not installed") from e
        except subprocess.CalledProcessError as e:
            detail = (e.stderr or "").strip().splitlines()
            raise GuestIsoError(f"genisoimage: exit {e.returncode}: {detail[-1:]}") from e
        os.replace(partial, out)
    return out
