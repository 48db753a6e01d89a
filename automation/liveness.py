"""Host liveness: Up -> Suspect -> Down -> fenced -> (HA) -> Up again.

- Suspect: the effector's checks failed (libvirt unreachable for its
  down_after rounds); the recorder records it (host.suspected). No new
  placements from then on.
- Down: a Suspect host whose heartbeat on its shared pools is older than
  heartbeat_timeout_s (or absent) is confirmed Down (host.down). A fresh
  heartbeat keeps it Suspect: the host runs, only its management path is
  broken, and nothing is fenced or restarted.
- Fenced: a Down host is fenced through the Fencer (host.fenced) before
  HA touches anything it ran (automation/ha.py).
- Up: a Suspect host that answers again is Up at once (the recorder); a
  fenced Down host that answers again (host.answered) and whose heartbeat
  is fresh is declared Up after up_after_s (host.up), once its HA run has
  ended and no VM is recorded Running on it (a late one is HA's first).
  An admin may declare any Suspect or Down host up (POST
  /v1/hosts/{id}/declare-up).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID

import structlog

from cloud_engine.automation.fencing import FenceError, Fencer, FenceTarget
from cloud_engine.automation.ha import HaRunner
from cloud_engine.automation.heartbeat import HeartbeatSource, age_s
from cloud_engine.automation.reads import HostRow, Reads
from cloud_engine.automation.sender import Sender
from cloud_engine.engine.commands.liveness import (
    ConfirmHostDown,
    DeclareHostAlive,
    RecordHostFenced,
)
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore

log = structlog.get_logger("automation.liveness")

ACTOR = "automation:liveness"


class LivenessMonitor:
    def __init__(
        self,
        service: CommandService,
        store: EventStore,
        reads: Reads,
        heartbeats: HeartbeatSource,
        fencer: Fencer,
        ha: HaRunner,
        *,
        heartbeat_timeout_s: float = 4.0,
        up_after_s: float = 10.0,
    ) -> None:
        self.service = service
        self.store = store
        self.reads = reads
        self.heartbeats = heartbeats
        self.fencer = fencer
        self.ha = ha
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.up_after_s = up_after_s
        self._alive_noted: set[tuple[UUID, int]] = set()
        self._send = Sender(
            service, ACTOR, log, refused="liveness_not_recorded", recorded="liveness_recorded"
        )

    async def check_once(self) -> None:
        for row in await self.reads.hosts():
            if row.liveness == "Up":
                continue
            try:
                await self._check(row)
            except Exception:
                log.exception("liveness_check_failed", host_id=str(row.id))

    async def _check(self, row: HostRow) -> None:
        host = await asyncio.to_thread(self.store.load, row.id)
        if not isinstance(host, Host) or host.liveness == "Up":
            return
        paths = await self.reads.shared_pool_paths(row)
        beat = await asyncio.to_thread(self.heartbeats.last_heartbeat, host.name, paths)
        now = datetime.now(UTC)
        age = age_s(beat, now)
        fresh = age is not None and age <= self.heartbeat_timeout_s
        if host.liveness == "Suspect":
            if fresh:
                if (host.id, host.version) not in self._alive_noted:
                    self._alive_noted.add((host.id, host.version))
                    log.warning(
                        "host_suspect_but_heartbeat_fresh",
                        host=host.name,
                        heartbeat_age_s=round(age or 0, 1),
                    )
                return
            seen = "no heartbeat" if age is None else f"its heartbeat is {age:.1f} s old"
            await self._send(
                ConfirmHostDown(
                    host_id=host.id,
                    reason=f"libvirt unreachable and {seen} (> {self.heartbeat_timeout_s:g} s)",
                    last_heartbeat_at=beat,
                ),
                f"down/{host.id}/{host.version}",
            )
            host = await asyncio.to_thread(self.store.load, row.id)
            assert isinstance(host, Host)
        if host.liveness != "Down":
            return
        if not host.fenced:
            try:
                await self.fencer.fence(
                    FenceTarget(host_id=host.id, name=host.name, libvirt_uri=host.libvirt_uri)
                )
            except FenceError as e:
                log.error("host_not_fenced", host=host.name, reason=str(e))
                return
            await self._send(
                RecordHostFenced(host_id=host.id, fencer=self.fencer.name),
                f"fenced/{host.id}/{host.version}",
            )
            host = await asyncio.to_thread(self.store.load, row.id)
            assert isinstance(host, Host)
        recovered = await self.ha.run(host)
        since = host.answering_since
        # Up again only once the HA run has ended (its restarts are counted
        # against the other hosts, and a run is one per fence) and no VM is
        # recorded Running on the host: the fence powered everything off.
        if (
            recovered
            and since is not None
            and fresh
            and (now - since).total_seconds() >= self.up_after_s
        ):
            await self._send(
                DeclareHostAlive(
                    host_id=host.id,
                    reason=(
                        f"fenced, then answering and heartbeat fresh for"
                        f" {(now - since).total_seconds():.0f} s"
                    ),
                ),
                f"up/{host.id}/{host.version}",
            )
