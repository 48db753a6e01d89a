"""The second signal of host liveness: a heartbeat each host writes to the
shared storage pools it uses.

A host's agent (in the lab: a process inside the host, dying with it)
rewrites `<pool path>/.ce-heartbeat/<host name>` every second or so for
every pool its libvirtd has active. The file's modification time is the
heartbeat: if the host's libvirt stops answering but the heartbeat is
fresh, the host is alive (a management-network or libvirtd problem), and
nothing of it is fenced or restarted elsewhere. Reading it needs the shared
pools mounted where automation runs (it reads them as files), which is how
the storage a cluster shares is mounted anyway.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

HEARTBEAT_DIR = ".ce-heartbeat"


class HeartbeatSource(Protocol):
    def last_heartbeat(self, host_name: str, pool_paths: Iterable[str]) -> datetime | None:
        """The newest heartbeat of the host in any of those pools (None: none)."""


class PoolHeartbeats:
    def last_heartbeat(self, host_name: str, pool_paths: Iterable[str]) -> datetime | None:
        newest: float | None = None
        for path in pool_paths:
            try:
                mtime = os.stat(Path(path) / HEARTBEAT_DIR / host_name).st_mtime
            except OSError:
                continue
            newest = mtime if newest is None else max(newest, mtime)
        return None if newest is None else datetime.fromtimestamp(newest, UTC)


def age_s(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else max(0.0, (now - at).total_seconds())
