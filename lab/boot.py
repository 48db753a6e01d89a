"""Starting a host, waiting until its libvirtd answers, and killing hosts:
one (a power cut), all of this lab's, or what a killed process left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import libvirt
import msgspec

from cloud_engine.lab import hostinit, underlay
from cloud_engine.lab.hostfs import DISK
from cloud_engine.lab.hostinit import InitSpec
from cloud_engine.lab.model import HostRecord, LabError, Layout
from cloud_engine.lab.system import (
    alive,
    kill,
    list_netns,
    pids_in_netns,
    pids_with_arg,
    start_time,
    wait_gone,
)

# libvirt prints every error to stderr unless told otherwise; the lab says
# what failed itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# Supervisors we started: polled so that a dead one is not left a zombie.
_children: dict[int, subprocess.Popen[bytes]] = {}
_SBIN = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def spawn(layout: Layout, record: HostRecord) -> None:
    """Start the host's supervisor (its namespace and link exist)."""
    host_dir = layout.host_dir(record.name)
    spec = InitSpec(
        name=record.name,
        netns=layout.netns(record.name),
        host_dir=str(host_dir),
        binds=[
            (str(layout.run_dir(record.name)), "/run/libvirt"),
            *((str(host_dir / d), target) for d, target in DISK),
            (str(host_dir / "hosts"), "/etc/hosts"),
            (str(host_dir / "resolv.conf"), "/etc/resolv.conf"),
        ],
        hide_dir=str(layout.hosts_dir),
        local_pool=str(layout.local_pool(record.name)),
    )
    spec_path = host_dir / "init.json"
    spec_path.write_bytes(msgspec.json.encode(spec))
    pidfile = host_dir / "init.pid"
    pidfile.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{_SBIN}:{env.get('PATH', '')}"
    with (host_dir / "log" / "lab-init.log").open("ab") as log:
        proc = subprocess.Popen(
            # Run as a file (-P: without its folder on sys.path), not as
            # lab.hostinit: the package would import libvirt and the rest
            # into every host's pid 1.
            [sys.executable, "-P", hostinit.__file__, str(spec_path), str(pidfile)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Not in the caller's session: Ctrl-C on `lab up` is no power cut.
            start_new_session=True,
            cwd="/",
            env=env,
        )
    _children[proc.pid] = proc
    record.supervisor_pid = proc.pid
    record.supervisor_start = start_time(proc.pid) or 0
    record.init_pid = record.init_start = 0
    record.power = "on"
    record.partitioned = False


def wait_ready(layout: Layout, records: list[HostRecord], timeout_s: float) -> None:
    """Until every host's libvirtd answers; a host that dies is an error."""
    pending = list(records)
    deadline = time.monotonic() + timeout_s
    while pending:
        for record in list(pending):
            if not record.init_pid:
                _read_pidfile(layout, record)
            if not alive(record.supervisor_pid, record.supervisor_start):
                reap_children()
                raise LabError(f"host {record.name} died while starting: {tail(layout, record)}")
            if record.init_pid and answers(layout.view(record).uri, _socket(layout, record)):
                pending.remove(record)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(r.name for r in pending)
            raise LabError(
                f"{names}: libvirtd did not answer within {timeout_s:.0f} s;"
                f" {tail(layout, pending[0])}"
            )
        time.sleep(0.02)


def _read_pidfile(layout: Layout, record: HostRecord) -> None:
    try:
        pid = int((layout.host_dir(record.name) / "init.pid").read_text())
    except (FileNotFoundError, ValueError):
        return
    record.init_pid = pid
    record.init_start = start_time(pid) or 0


def _socket(layout: Layout, record: HostRecord) -> Path:
    return layout.run_dir(record.name) / "libvirt-sock"


def answers(uri: str, sock: Path) -> bool:
    """libvirtd accepts on its socket and answers an RPC."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
    except OSError:
        return False
    finally:
        probe.close()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        conn.getLibVersion()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def probe_caps(uri: str) -> None:
    """Make libvirtd probe every QEMU binary now (it does on first need)."""
    conn = libvirt.open(uri)
    try:
        conn.getCapabilities()
    finally:
        conn.close()


def tail(layout: Layout, record: HostRecord, lines: int = 3) -> str:
    logs = layout.host_dir(record.name) / "log"
    found: list[str] = []
    for name in ("lab-init.log", "libvirtd.log"):
        try:
            found += (logs / name).read_text(errors="replace").strip().splitlines()[-lines:]
        except FileNotFoundError:
            continue
    return " | ".join(found) if found else f"no log in {logs}"


def host_alive(record: HostRecord) -> bool:
    return alive(record.supervisor_pid, record.supervisor_start) and alive(
        record.init_pid, record.init_start
    )


def stop(records: Iterable[HostRecord], grace_s: float) -> None:
    """Ask hosts to stop (QEMU gets SIGTERM and flushes its images)."""
    pids = [(r.supervisor_pid, r.supervisor_start) for r in records if host_alive(r)]
    for pid, _ in pids:
        kill(pid, signal.SIGTERM)
    wait_gone(pids, grace_s)


def power_cut(layout: Layout, record: HostRecord) -> None:
    """Everything in the host dies at once; then its link goes."""
    if alive(record.init_pid, record.init_start):
        kill(record.init_pid)
    sweep(layout, names=[record.name])
    record.power = "off"
    record.partitioned = False
    record.supervisor_pid = record.supervisor_start = record.init_pid = record.init_start = 0


def sweep(layout: Layout, *, names: Iterable[str] = (), keep: Iterable[str] | None = None) -> None:
    """Kill and remove the named hosts; with keep, also every host of this
    lab that is not kept (what a killed `lab up` or supervisor left)."""
    doomed = set(names)
    if keep is not None:
        kept = set(keep)
        # A host's own namespace and those made on its behalf (h1, h1-vr...).
        found = {ns[len(layout.netns_prefix) :].split("-", 1)[0] for ns in list_netns()}
        found.discard(layout.switch_netns[len(layout.netns_prefix) :])
        doomed |= (found | set(underlay.ports(layout))) - kept
    victims: list[int] = []
    for name in sorted(doomed):
        victims += pids_with_arg(str(layout.host_dir(name) / "init.json"))
        victims += pids_in_netns(layout.netns(name))
    for pid in victims:
        kill(pid)
    started = [(pid, start_time(pid)) for pid in victims]
    if not wait_gone([(p, s) for p, s in started if s is not None], 10.0):
        raise LabError(f"processes of {', '.join(sorted(doomed))} would not die")
    reap_children()
    for name in sorted(doomed):
        underlay.remove_host(layout, name)


def reap_children() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]
