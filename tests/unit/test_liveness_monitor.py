"""The liveness monitor's decisions (automation/liveness.py), on a host
aggregate behind fakes: a host is fenced only when the effector's checks
failed (Suspect) and, independently, its heartbeat is stale; one signal
alone fences nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from cloud_engine.automation.fencing import FenceTarget
from cloud_engine.automation.liveness import LivenessMonitor
from cloud_engine.automation.reads import HostRow
from cloud_engine.engine.commands.liveness import ConfirmHostDown, RecordHostFenced
from cloud_engine.engine.fabric.host import Host
from tests.unit.support import make_host


class Fakes:
    """The store, service, reads, heartbeats, fencer and HA runner the
    monitor uses, around one host."""

    def __init__(self, host: Host, heartbeat_age_s: float | None) -> None:
        self.host = host
        self.beat = (
            None
            if heartbeat_age_s is None
            else datetime.now(UTC) - timedelta(seconds=heartbeat_age_s)
        )
        self.sent: list[str] = []
        self.fenced: list[UUID] = []
        self.name = "fake-fencer"

    # store
    def load(self, aggregate_id: UUID) -> Host | None:
        return self.host if aggregate_id == self.host.id else None

    # service: the commands the monitor sends, applied to the host
    async def execute_async(self, command: Any, context: Any) -> None:
        self.sent.append(type(command).__name__)
        if isinstance(command, ConfirmHostDown):
            self.host.confirm_down(command.reason, command.last_heartbeat_at)
        elif isinstance(command, RecordHostFenced):
            self.host.record_fenced(command.fencer)

    # reads
    async def hosts(self) -> list[HostRow]:
        h = self.host
        return [
            HostRow(
                id=h.id, name=h.name, zone_id=h.zone_id, cluster_id=h.cluster_id,
                libvirt_uri=h.libvirt_uri, liveness=h.liveness,
            )
        ]  # fmt: skip

    async def shared_pool_paths(self, host: HostRow) -> list[str]:
        return ["/pool"]

    # heartbeats
    def last_heartbeat(self, host_name: str, pool_paths: Any) -> datetime | None:
        return self.beat

    # fencer
    async def fence(self, target: FenceTarget) -> None:
        self.fenced.append(target.host_id)

    # HA
    async def run(self, host: Host) -> bool:
        return False


def check(host: Host, heartbeat_age_s: float | None) -> Fakes:
    fakes = Fakes(host, heartbeat_age_s)
    monitor = LivenessMonitor(
        fakes,  # type: ignore[arg-type]
        fakes,  # type: ignore[arg-type]
        fakes,  # type: ignore[arg-type]
        fakes,
        fakes,
        fakes,  # type: ignore[arg-type]
        heartbeat_timeout_s=4.0,
    )
    asyncio.run(monitor.check_once())
    return fakes


def test_a_suspect_host_with_a_fresh_heartbeat_is_neither_down_nor_fenced():
    host = make_host()
    host.suspect("libvirt unreachable for 2 rounds")
    found = check(host, heartbeat_age_s=1.0)
    assert (found.sent, found.fenced) == ([], [])
    assert (host.liveness, host.fenced) == ("Suspect", False)


def test_a_host_whose_libvirt_answers_is_not_fenced_however_old_its_heartbeat():
    host = make_host()
    found = check(host, heartbeat_age_s=None)
    assert (found.sent, found.fenced) == ([], [])
    assert host.liveness == "Up"


def test_a_suspect_host_with_a_stale_heartbeat_is_down_then_fenced():
    host = make_host()
    host.suspect("libvirt unreachable for 2 rounds")
    found = check(host, heartbeat_age_s=5.0)
    assert found.sent == ["ConfirmHostDown", "RecordHostFenced"]
    assert found.fenced == [host.id]
    assert (host.liveness, host.fenced) == ("Down", True)
