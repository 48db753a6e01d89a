"""The VXLAN device that carries one network's bridge to the other hosts.

One device per network, named after its VNI, enslaved to the network's
bridge. Flooded traffic (ARP, unknown unicast) is head-end replicated to
every remote VTEP through all-zero FDB entries; the device learns which VTEP
answers for which MAC, so no per-guest FDB management is needed.

Everything observes with `ip -j` / `bridge -j` before acting, so each call
converges and repeating it changes nothing. netns runs the same commands in a
network namespace: a name (`ip netns exec`, how the driver tests build
several "hosts") or a path (`nsenter --net=`, how the effector reaches the
namespace of a host's libvirtd: effectors/host_netns.py).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import structlog

from cloud_engine.effectors.network.spec import VxlanSpec

log = structlog.get_logger("effectors.network")

ALL_ZERO_MAC = "00:00:00:00:00:00"
COMMAND_TIMEOUT_S = 30.0


class VxlanError(RuntimeError):
    """An ip/bridge command failed; stderr is the tool's own explanation."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} failed ({returncode}): {stderr.strip()}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class VxlanConflict(RuntimeError):
    """A device by that name exists but is not the VXLAN device asked for."""

    def __init__(self, dev: str, mismatches: list[str]) -> None:
        super().__init__(f"device {dev} exists and differs: {'; '.join(mismatches)}")
        self.dev = dev
        self.mismatches = mismatches


def device_name(vni: int) -> str:
    # "vx" + at most 8 digits stays under the 15-character interface limit.
    return f"vx{vni}"


def _argv(argv: list[str], netns: str | None) -> list[str]:
    if not netns:
        return argv
    if netns.startswith("/"):
        return ["nsenter", f"--net={netns}", "--", *argv]
    return ["ip", "netns", "exec", netns, *argv]


def run(argv: list[str], netns: str | None = None) -> str:
    full = _argv(argv, netns)
    proc = subprocess.run(  # argv list, never a shell
        full, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise VxlanError(full, proc.returncode, proc.stderr)
    return proc.stdout


def _json(argv: list[str], netns: str | None) -> list[dict[str, Any]]:
    out = run(argv, netns).strip()
    data = json.loads(out) if out else []
    return data if isinstance(data, list) else []


def link_info(dev: str, netns: str | None = None) -> dict[str, Any] | None:
    """`ip -j -d link show dev` as a dict, or None when there is no such device."""
    try:
        links = _json(["ip", "-j", "-d", "link", "show", "dev", dev], netns)
    except VxlanError as e:
        if "does not exist" in e.stderr:
            return None
        raise
    return links[0] if links else None


def vxlan_ports(bridge: str, netns: str | None = None) -> list[dict[str, Any]]:
    """The VXLAN devices enslaved to bridge (none when the bridge is absent)."""
    try:
        links = _json(["ip", "-j", "-d", "link", "show", "master", bridge], netns)
    except VxlanError as e:
        if "does not exist" in e.stderr:
            return []
        raise
    return [lk for lk in links if lk.get("linkinfo", {}).get("info_kind") == "vxlan"]


def _mismatches(info: dict[str, Any], vx: VxlanSpec) -> list[str]:
    linkinfo = info.get("linkinfo", {})
    if linkinfo.get("info_kind") != "vxlan":
        return [f"kind is {linkinfo.get('info_kind')!r}, not vxlan"]
    data = linkinfo.get("info_data", {})
    wanted = {"id": vx.vni, "local": vx.local_ip, "port": vx.port, "link": vx.underlay_dev}
    # None of these can be changed on a live vxlan device: a mismatch means
    # someone else's device or a spec change that needs remove + ensure.
    return [
        f"{key} is {data.get(key)!r}, wanted {value!r}"
        for key, value in wanted.items()
        if data.get(key) != value
    ]


def remote_vteps(dev: str, netns: str | None = None) -> set[str]:
    entries = _json(["bridge", "-j", "fdb", "show", "dev", dev], netns)
    return {e["dst"] for e in entries if e.get("mac") == ALL_ZERO_MAC and "dst" in e}


def ensure_vxlan(dev: str, vx: VxlanSpec, bridge: str, netns: str | None = None) -> bool:
    """Converge dev to a VXLAN port of bridge with exactly vx's remotes, up.
    Returns whether anything changed."""
    changed = False
    info = link_info(dev, netns)
    if info is None:
        run(
            [
                "ip", "link", "add", dev, "type", "vxlan", "id", str(vx.vni),
                "local", vx.local_ip, "dev", vx.underlay_dev, "dstport", str(vx.port),
            ],
            netns,
        )  # fmt: skip
        log.info("vxlan_created", dev=dev, vni=vx.vni, netns=netns)
        changed = True
        info = link_info(dev, netns)
        if info is None:
            raise VxlanError(["ip", "link", "show", dev], 1, "created device vanished")
    mismatches = _mismatches(info, vx)
    if mismatches:
        raise VxlanConflict(dev, mismatches)

    have, want = remote_vteps(dev, netns), set(vx.remote_ips)
    for remote in sorted(want - have):
        run(["bridge", "fdb", "append", ALL_ZERO_MAC, "dev", dev, "dst", remote], netns)
        changed = True
    for remote in sorted(have - want):
        run(["bridge", "fdb", "del", ALL_ZERO_MAC, "dev", dev, "dst", remote], netns)
        changed = True

    if info.get("master") != bridge:
        run(["ip", "link", "set", "dev", dev, "master", bridge], netns)
        changed = True
    if "UP" not in info.get("flags", []):
        run(["ip", "link", "set", "dev", dev, "up"], netns)
        changed = True
    if changed:
        log.info("vxlan_ensured", dev=dev, vni=vx.vni, bridge=bridge, netns=netns)
    return changed


def remove_vxlan(dev: str, netns: str | None = None) -> bool:
    """Delete dev if it is there; refuse to delete a device that is not VXLAN."""
    info = link_info(dev, netns)
    if info is None:
        return False
    kind = info.get("linkinfo", {}).get("info_kind")
    if kind != "vxlan":
        raise VxlanConflict(dev, [f"kind is {kind!r}, not vxlan; not deleting it"])
    try:
        run(["ip", "link", "del", "dev", dev], netns)
    except VxlanError as e:
        if "Cannot find device" in e.stderr:  # removed concurrently
            return False
        raise
    log.info("vxlan_removed", dev=dev, netns=netns)
    return True
