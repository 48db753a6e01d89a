"""A lab host's supervisor and its pid 1: `python -P lab/hostinit.py <spec.json> <pidfile>`.

The supervisor joins the host's network namespace, makes new mount, UTS and
pid namespaces and forks the host's init (pid 1 there), then waits for it.
Its init is killed with it (PR_SET_PDEATHSIG), and when a pid namespace's
init dies the kernel kills everything else in it at once: the daemons and
every QEMU. So SIGKILL of either process is a power cut, and nothing of a
host can outlive it.

The init lays out the host's filesystem (a private /run; the host's own
/etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt,
/etc/hosts, /etc/resolv.conf; /proc and /sys of its namespaces; other hosts'
directories hidden), starts virtlogd, virtlockd and libvirtd, and reaps every
process that ends in the host. That matters: libvirt kills a QEMU (after a
migration, after probing capabilities) and waits for it to be gone; a pid 1
that does not reap leaves it a zombie, and libvirt waits 10 s after SIGTERM
and 30 s after SIGKILL before it gives up, per process.

Only the standard library and msgspec: this runs before anything else.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


class InitSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    netns: str
    host_dir: str
    # (source, target): the host's directories over the system's.
    binds: list[tuple[str, str]]
    # Hidden inside the host (other hosts' directories), except local_pool.
    hide_dir: str
    local_pool: str
    # How long a graceful stop waits for the host's processes.
    stop_grace_s: float = 5.0


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _umount_tree(top: str) -> None:
    """Detach every mount at or under top: the copies this namespace got of
    /run/netns's entries would otherwise keep other hosts' network
    namespaces (and their links) alive after those hosts are gone."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == top or point.startswith(top.rstrip("/") + "/"):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        _libc.umount2(point.encode(), MNT_DETACH)


def _layout(spec: InitSpec) -> None:
    # Nothing mounted here reaches the machine, and the reverse.
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # sysfs shows the network devices of the namespace that mounts it; libvirt
    # reads the host's own there.
    _umount_tree("/sys")
    _mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _umount_tree("/run")
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for sub in ("libvirt", "lock"):
        os.makedirs(f"/run/{sub}", exist_ok=True)
    for source, target in spec.binds:
        _bind_onto(source, target)
    # The local pool at its root-namespace path, and no other host's files.
    pool = os.open(spec.local_pool, os.O_PATH | os.O_DIRECTORY)
    _mount("tmpfs", spec.hide_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    os.makedirs(spec.local_pool, exist_ok=True)
    _mount(f"/proc/self/fd/{pool}", spec.local_pool, None, MS_BIND)
    os.close(pool)


def _bind_onto(source: str, target: str) -> None:
    real = os.path.realpath(target)
    if real.startswith("/run/") and os.path.isfile(source) and target != real:
        # A symlink into the old /run (systemd-resolved's resolv.conf):
        # the file is made in the new one.
        os.makedirs(os.path.dirname(real), exist_ok=True)
        Path(real).write_bytes(Path(source).read_bytes())
        return
    if not os.path.exists(real):
        Path(real).mkdir(parents=True)
    _mount(source, real, None, MS_BIND)


def _log(spec: InitSpec, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {spec.name}: {message}", flush=True)


def _wait_socket(path: str, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{path}: its daemon exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.005)


# Where libvirtd keeps its pools' definitions: the active ones' status
# (pools started by hand) and the defined ones (autostarted at boot, which
# leaves no status file).
_POOL_DIRS = ("/run/libvirt/storage", "/etc/libvirt/storage")
HEARTBEAT_DIR = ".ce-heartbeat"
HEARTBEAT_S = 1.0


def _pool_paths() -> set[str]:
    paths = set()
    for top in _POOL_DIRS:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            if not name.endswith(".xml"):
                continue
            try:
                path = ET.parse(os.path.join(top, name)).findtext(".//target/path")
            except (OSError, ET.ParseError):
                continue
            if path and os.path.isdir(path):
                paths.add(path)
    return paths


def _heartbeat(name: str) -> None:
    """The host's heartbeat: every second, the file .ce-heartbeat/<name> in
    every pool its libvirtd has (active or defined) is rewritten (its mtime is the
    beat). A thread of the host's pid 1, so it dies with the host: what a
    real host's agent does, and what tells a dead host from one whose
    libvirt does not answer (automation/heartbeat.py)."""
    while True:
        stamp = f"{time.time():.3f}\n".encode()
        for path in _pool_paths():
            beat = os.path.join(path, HEARTBEAT_DIR)
            try:
                os.makedirs(beat, exist_ok=True)
                fd = os.open(os.path.join(beat, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, stamp)
                finally:
                    os.close(fd)
            except OSError:
                continue  # a pool being removed; the next beat tries again
        time.sleep(HEARTBEAT_S)


class _Stop(Exception):
    pass


def _on_term(_sig: int, _frame: object) -> None:
    raise _Stop


def init(spec: InitSpec) -> int:
    """pid 1 of the host."""
    _layout(spec)
    socket.sethostname(spec.name)
    daemons: dict[int, str] = {}
    # Kept: a Popen dropped while its process runs is polled by the next one.
    procs = []
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    try:
        for daemon in ("virtlogd", "virtlockd"):
            proc = subprocess.Popen([daemon])
            procs.append(proc)
            daemons[proc.pid] = daemon
            _wait_socket(f"/run/libvirt/{daemon}-sock", proc)
        libvirtd = subprocess.Popen(["libvirtd"])
        procs.append(libvirtd)
        daemons[libvirtd.pid] = "libvirtd"
        _log(spec, "virtlogd, virtlockd and libvirtd started")
        threading.Thread(target=_heartbeat, args=(spec.name,), daemon=True).start()
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.5)
                continue
            if pid in daemons:
                _log(spec, f"{daemons.pop(pid)} ended ({_describe(status)})")
    except _Stop:
        pass
    # kill(-1) from a namespace's init reaches every other process in it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + spec.stop_grace_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.01)
        except ChildProcessError:
            break
    _log(spec, "stopped")
    return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def supervise(spec: InitSpec, pidfile: str) -> int:
    """Enter the host's namespaces, fork its init, wait for it."""
    fd = os.open(f"/run/netns/{spec.netns}", os.O_RDONLY)
    _check(_libc.setns(fd, CLONE_NEWNET), f"setns {spec.netns}")
    os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
    # The init hides the host directories under a tmpfs in the namespace we
    # share with it: write the pidfile through a handle on the real one.
    directory = os.open(os.path.dirname(pidfile), os.O_RDONLY | os.O_DIRECTORY)
    # Held open by the supervisor: its end of file tells the child the
    # supervisor died before PR_SET_PDEATHSIG was set (getppid() says 0 in a
    # new pid namespace, whoever the parent is).
    alive_r, alive_w = os.pipe()
    child = os.fork()
    if child == 0:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.close(alive_w)
        if select.select([alive_r], [], [], 0)[0]:
            os._exit(1)
        os.close(alive_r)
        try:
            code = init(spec)
        except BaseException as e:
            _log(spec, f"init failed: {e!r}")
            code = 1
        os._exit(code)
    os.close(alive_r)
    # The lab reads the init's pid from here (it is the host's pid 1).
    name = os.path.basename(pidfile)
    fd = os.open(f"{name}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=directory)
    os.write(fd, f"{child}\n".encode())
    os.close(fd)
    os.rename(f"{name}.tmp", name, src_dir_fd=directory, dst_dir_fd=directory)
    os.close(directory)
    # A graceful stop (lab down) asks the supervisor; the init does the rest.
    signal.signal(signal.SIGTERM, lambda _s, _f: os.kill(child, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


def main(argv: list[str]) -> int:
    spec_path, pidfile = argv[1], argv[2]
    spec = msgspec.json.decode(Path(spec_path).read_bytes(), type=InitSpec)
    return supervise(spec, pidfile)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
