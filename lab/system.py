"""The machine side: commands, root and tools, processes and namespaces."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cloud_engine.lab.model import LabError

# What a lab host runs; all come with scripts/libvirt-host's packages.
TOOLS = ("ip", "libvirtd", "virtlogd", "virtlockd", "virt-admin", "qemu-system-x86_64")
NETNS_DIR = Path("/run/netns")


def require_machine() -> None:
    """One clear line instead of a traceback when the lab cannot run here."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network, mount and pid namespaces, links, mounts)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: install them with scripts/libvirt-host")


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LabError(f"missing {argv[0]}: install it with scripts/libvirt-host") from None
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv)}: {detail[-1] if detail else f'exit {done.returncode}'}")
    return done


def ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    run(argv, check=check)


def ip_batch(lines: Iterable[str], *, netns: str | None = None) -> None:
    """Many ip commands in one process (each `ip` costs a few milliseconds)."""
    script = "\n".join(lines) + "\n"
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    done = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"ip -batch ({netns or 'root namespace'}): {done.stderr.strip()}")


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    return pid > 0 and start_time(pid) == started


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def reap(pid: int) -> None:
    """Collect a child of ours that died, so it is not left a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pids: Iterable[tuple[int, int]], timeout_s: float) -> bool:
    """Wait until every (pid, start time) is gone; True if they all went."""
    pending = list(pids)
    deadline = time.monotonic() + timeout_s
    while True:
        for pid, _ in pending:
            reap(pid)
        pending = [(p, s) for p, s in pending if alive(p, s)]
        if not pending or time.monotonic() >= deadline:
            return not pending
        time.sleep(0.01)


def pids_in_netns(netns: str) -> list[int]:
    """Processes whose network namespace is the named one."""
    try:
        target = os.stat(NETNS_DIR / netns)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if (ns.st_ino, ns.st_dev) == (target.st_ino, target.st_dev):
            found.append(int(entry))
    return found


def pids_with_arg(marker: str) -> list[int]:
    """Processes with marker among their arguments (our supervisors)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if marker.encode() in args:
            found.append(int(entry))
    return found
