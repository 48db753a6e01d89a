"""Where a host's network commands run: the network namespace of its libvirtd.

The network driver makes VXLAN devices and looks at bridges with iproute2,
which acts on the network namespace it runs in; libvirt makes the bridges
in the daemon's. They must be the same. An effector that runs on its host
(qemu:///system, qemu+ssh:// to itself) shares the daemon's namespace and
runs the commands as they are. A libvirtd reached through a Unix socket
given in the URI (qemu+unix:///system?socket=...) may run in a namespace of
its own (a host of `cloud-engine lab`, a container): the socket's peer
credentials name the daemon's pid
(SO_PEERCRED, translated into our pid namespace), and its network
namespace is /proc/<pid>/ns/net, entered with nsenter for each command.
Nothing here knows about the lab; any local daemon in another namespace is
served the same way.

The answer is remembered per socket with the daemon's pid and start time,
and asked again when that process is gone (a restarted daemon, a host
powered off and on): each asking opens one connection that the daemon logs
as closed early ("End of file while reading data").
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


class NetnsError(RuntimeError):
    """The daemon's namespace could not be found (its socket does not
    answer, as when its host is down or cut off): the work fails with it,
    as with libvirt's own "cannot connect"."""


def local_socket(uri: str) -> str | None:
    """The Unix socket a libvirt URI names (?socket=), or None: a remote
    transport (ssh, tls, tcp), the test driver, or this machine's own
    daemon at its default socket, which shares our namespace."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    if driver != "qemu" or transport not in ("", "unix") or parts.hostname:
        return None
    given = parse_qs(parts.query).get("socket")
    return given[0] if given else None


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime), counted after the parenthesised command name.
    fields: list[str] = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def _peer_pid(path: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        try:
            s.connect(path)
        except OSError as e:
            raise NetnsError(f"libvirt socket {path} does not answer: {e}") from e
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    if pid <= 0:
        raise NetnsError(f"libvirt socket {path}: its daemon is outside our pid namespace")
    return pid


class HostNamespaces:
    """uri -> the network namespace (a path for nsenter) its commands run in,
    or None for this process's own."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int | None, str | None]] = {}
        self._lock = threading.Lock()

    def netns(self, uri: str) -> str | None:
        path = local_socket(uri)
        if path is None:
            return None
        with self._lock:
            known = self._known.get(path)
            if known is not None and _start_time(known[0]) == known[1]:
                return known[2]
            pid = _peer_pid(path)
            theirs = f"/proc/{pid}/ns/net"
            try:
                same = os.stat(theirs).st_ino == os.stat("/proc/self/ns/net").st_ino
            except OSError as e:
                raise NetnsError(f"libvirt socket {path}: daemon {pid} is gone: {e}") from e
            found = None if same else theirs
            self._known[path] = (pid, _start_time(pid), found)
            return found
