"""cloud-init NoCloud seeds: the CD-ROM a VM with user data or keys boots with.

An ISO 9660 image labelled cidata holding meta-data (instance-id,
local-hostname, public-keys) and user-data, made as cloud-init's docs make
it (genisoimage, Debian's package of that name). The tiny-linux guest
(guest/rootfs/etc/init.d/nocloud) and cloud-init read it alike.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

GENISOIMAGE = "genisoimage"


class SeedError(RuntimeError):
    """The seed could not be made; the message says why."""


def meta_data(instance_id: str, hostname: str | None, public_keys: Sequence[str]) -> str:
    """NoCloud's meta-data, YAML. Keys are single-line OpenSSH keys (the API
    refuses anything else), quoted so a comment with ': ' stays one scalar."""
    lines = [f"instance-id: {instance_id}"]
    if hostname:
        lines.append(f"local-hostname: {hostname}")
    if public_keys:
        lines += ["public-keys:", *(f'  - "{k}"' for k in public_keys)]
    return "\n".join(lines) + "\n"


def make_seed(
    path: Path,
    *,
    instance_id: str,
    hostname: str | None = None,
    user_data: str | bytes = b"",
    public_keys: Sequence[str] = (),
) -> Path:
    """The seed ISO at path (written whole: a partial file never has the name)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "meta-data").write_text(meta_data(instance_id, hostname, public_keys))
        (d / "user-data").write_bytes(
            user_data.encode() if isinstance(user_data, str) else user_data
        )
        partial = d / "seed.iso"
        argv = [
            GENISOIMAGE, "-quiet", "-output", str(partial), "-volid", "cidata", "-joliet",
            "-rock", str(d / "user-data"), str(d / "meta-data"),
        ]  # fmt: skip
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True)
        except FileNotFoundError as e:
            raise SeedError(f"{GENISOIMAGE}: not installed (apt-get install genisoimage)") from e
        except subprocess.CalledProcessError as e:
            detail = (e.stderr or "").strip().splitlines()
            raise SeedError(f"{GENISOIMAGE}: exit {e.returncode}: {detail[-1:]}") from e
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_target = path.with_name(path.name + ".partial")
        tmp_target.write_bytes(partial.read_bytes())
        tmp_target.replace(path)
    return path
