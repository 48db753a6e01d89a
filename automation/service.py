"""The automation component: liveness with fencing and HA, and convergence
of drift, each acting only through engine commands (`cloud-engine
automation`, and inside `up`)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

from cloud_engine.automation.convergence import STOP_GRACE_S, Converger, convergence_config
from cloud_engine.automation.fencing import Fencer
from cloud_engine.automation.ha import HaRunner
from cloud_engine.automation.heartbeat import HeartbeatSource, PoolHeartbeats
from cloud_engine.automation.liveness import LivenessMonitor
from cloud_engine.automation.reads import Reads
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool

log = structlog.get_logger("automation")


class Automation:
    def __init__(
        self,
        service: CommandService,
        store: EventStore,
        target: DatabaseTarget,
        bootstrap: str,
        prefix: str,
        fencer: Fencer,
        *,
        heartbeats: HeartbeatSource | None = None,
        check_s: float = 1.0,
        heartbeat_timeout_s: float = 4.0,
        up_after_s: float = 10.0,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.service = service
        self.store = store
        self.target = target
        self.fencer = fencer
        self.heartbeats = heartbeats or PoolHeartbeats()
        self.check_s = check_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.up_after_s = up_after_s
        self.converger = Converger(
            service, store, convergence_config(bootstrap, prefix), stop_grace_s=stop_grace_s
        )
        self.ha: HaRunner | None = None

    async def run(self, stop: asyncio.Event) -> None:
        pool = await create_pool(self.target, max_size=2, single_reads=True)
        reads = Reads(pool, self.target.schema)
        self.ha = HaRunner(self.service, self.store, reads)
        monitor = LivenessMonitor(
            self.service,
            self.store,
            reads,
            self.heartbeats,
            self.fencer,
            self.ha,
            heartbeat_timeout_s=self.heartbeat_timeout_s,
            up_after_s=self.up_after_s,
        )
        converging = asyncio.create_task(self.converger.run(stop))
        log.info("automation_started", fencer=self.fencer.name)
        try:
            while not stop.is_set():
                try:
                    await monitor.check_once()
                except asyncpg.UndefinedTableError:
                    # The projection worker has not made the read models yet.
                    log.info("read_models_not_ready")
                except Exception:
                    # The database away for a moment must not end HA.
                    log.exception("liveness_round_failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.check_s)
        finally:
            await asyncio.gather(converging, return_exceptions=True)
            await pool.close()
