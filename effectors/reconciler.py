"""The reconciler: compares what the hypervisors run with what the engine
recorded, and reports the differences as drift results.

It never repairs anything itself. A drift travels to the engine like any
effector result (kind "drift.*"), and the engine decides what to do: only the
engine may change a resource's state, so a reconciler acting on its own would
race the effectors carrying out the engine's work. What it does make sure
of is the hosts' fabric, which no engine state follows: every answering
host has its cluster's shared storage pools (effectors/host_pools.py), and
the virtual routers their rules (effectors/router_reconciler.py).

Which VMs belong to a host: a VM holds host_id only while placed, Starting,
Running, Stopping or Migrating; on the way out (stop, destroy) the engine
moves it to last_host_id, but the effector keeps the domain defined there. So
the VMs of a host are those with host_id, last_host_id or migration_target_id
equal to it.

Observation races: the hypervisor and the read models are read at different
moments. Effectors act only once the read models reflect the requesting event,
so the VMs are read before and after listing the domains, and a VM whose row
changed in between is not judged this round (its domain was observed while
work on it was in flight); the next round looks again.

A drift reported again carries the same operation id (derived from host,
aggregate, kind, observation and the VM version it was judged against), so the
engine records it once; once the engine has recorded something about the VM
(a new version), the same drift recurring later is a new report.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg
import libvirt
import msgspec
import structlog

from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.effectors.compute.driver import ComputeDriver
from cloud_engine.effectors.compute.spec import DomainState
from cloud_engine.effectors.desired import HostView, PoolView, VmView, VolumeView
from cloud_engine.effectors.drift import (
    DRIFT_IDS,
    VOLUME_JUDGED,
    Drift,
    compare,
    drift_operation_id,
    volume_drift,
)
from cloud_engine.effectors.host_pools import HostPools, trouble_id, trouble_result
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.own_acts import OwnActs
from cloud_engine.effectors.storage.pools import PoolMissing
from cloud_engine.effectors.storage.volumes import StorageDriver

log = structlog.get_logger("effectors.reconciler")

T = TypeVar("T", bound=msgspec.Struct)


# The ids of drift reports live in a namespace of their own, apart from the
# work items' (bus.work.work_id), so the two can never collide.
class ReadModelsLike(Protocol):
    """What the reconciler reads (effectors.desired.ReadModels provides it)."""

    async def hosts(self, zones: frozenset[UUID] | None) -> list[HostView]: ...

    async def where(
        self, cls: type[T], aggregate_type: str, field: str, value: UUID
    ) -> list[T]: ...

    async def where_in(
        self, cls: type[T], aggregate_type: str, field: str, values: Sequence[UUID]
    ) -> list[T]: ...


# -- libvirt lifecycle events ----------------------------------------------------

_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_libvirt_event_loop() -> None:
    """Install libvirt's default event loop, process-wide and once, and run
    it in a daemon thread. Only connections opened afterwards deliver domain
    events, so call this before the first connection is opened."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                # Blocks until the next event or timer; errors are libvirt's
                # own and must not kill the thread that every event needs.
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError as e:
                    log.warning("libvirt_event_loop_error", error=str(e))
                    time.sleep(0.5)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


# -- the reconciler ----------------------------------------------------------------


class Reconciler:
    def __init__(
        self,
        read_models: ReadModelsLike,
        publish: Callable[[EffectorResult], Awaitable[None]],
        *,
        zones: frozenset[UUID] | None,
        effector: str,
        hypervisor_for: Callable[[str], Hypervisor],
        interval_s: float = 30.0,
        down_after: int = 2,
        names: Names | None = None,
        check_volumes: bool = True,
        lifecycle_events: bool = False,
        event_settle_s: float = 0.5,
        event_share: float = 0.2,
        routers: Callable[[], Awaitable[list[EffectorResult]]] | None = None,
        retry_s: float = 0.5,
        connect_attempts: int = 3,
        own_acts: OwnActs | None = None,
        ensure_pools: bool = True,
    ) -> None:
        # Domains the effector is acting on: their events do not wake a round.
        self.own_acts = own_acts
        self.echoes_ignored = 0
        # The virtual routers' round (effectors/router_reconciler.py).
        self.routers = routers
        self.read_models = read_models
        self.publish = publish
        self.zones = zones
        self.effector = effector
        self.hypervisor_for = hypervisor_for
        self.interval_s = interval_s
        self.down_after = max(1, down_after)
        self.names = names or Names()
        self.check_volumes = check_volumes
        # Every answering host gets its cluster's shared pools (and so its
        # heartbeat): effectors/host_pools.py.
        self.host_pools = HostPools(self.names) if ensure_pools else None
        # The ids of the pool troubles published (once an outage each).
        self._troubles_reported: set[UUID] = set()
        self.lifecycle_events = lifecycle_events
        self.event_settle_s = event_settle_s
        # Rounds woken by events take at most this share of the time: a
        # round over thousands of VMs, woken by every start of a burst,
        # would otherwise run back to back beside the work it checks.
        self.event_share = event_share
        # While a host fails, the next round comes this soon: a host that
        # died is reported in seconds, not down_after whole intervals.
        self.retry_s = retry_s
        # A round's connect is its liveness check: retried briefly (~0.3-0.6
        # s), not for the ~2 s work gets, so a dead host fails a round fast.
        # Reporting it still takes down_after rounds in a row, and fencing a
        # stale heartbeat as well (automation/liveness.py).
        self.connect_attempts = connect_attempts
        # host id -> consecutive failed rounds, when the outage began, and
        # whether it has been reported.
        self._failures: dict[UUID, int] = {}
        self._down_since: dict[UUID, str] = {}
        self._reported_down: set[UUID] = set()
        # host id -> the connection its lifecycle events come through (a
        # reconnect gives a new connection, without the callback).
        self._watched: dict[UUID, Any] = {}
        # id(connection) -> (connection, callback id): one callback per
        # connection, however many hosts use it. Hosts with one URI share
        # one connection (effectors.executor), and libvirt refuses a second
        # registration on a connection ("event callback already tracked");
        # the callback only wakes the loop, whichever host it is for.
        self._callbacks: dict[int, tuple[Any, int]] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- one round ---------------------------------------------------------

    async def reconcile_once(self) -> list[EffectorResult]:
        """Compare every host of the zones once; publish and return the
        results (drift and unreachable hosts)."""
        results: list[EffectorResult] = []
        hosts = await self.read_models.hosts(self.zones)
        pools = await self._pools(hosts)
        for host in hosts:
            try:
                found = await self._reconcile_host(host, pools)
            except Exception:
                # One host failing half-way (its connection dropping while
                # volumes are observed) must not hide the others' drift.
                log.exception("reconcile_host_failed", host_id=str(host.id))
                continue
            for result in found:
                await self.publish(result)
                if result.kind == "host.unreachable":
                    # Once per outage, and only once it was published.
                    self._reported_down.add(host.id)
                if result.kind == "drift.host_pool":
                    self._troubles_reported.add(result.work_id)
            results.extend(found)
        if self.host_pools is not None:  # outages that ended are forgotten
            self._troubles_reported &= {trouble_id(t) for t in self.host_pools.failing()}
        if self.routers is not None:
            try:
                found = await self.routers()
            except Exception:
                log.exception("reconcile_routers_failed")
                found = []
            for result in found:
                await self.publish(result)
            results.extend(found)
        if results:
            log.info("reconcile_reported", results=len(results))
        return results

    async def _pools(self, hosts: list[HostView]) -> list[PoolView]:
        """The storage pools of the hosts' zones, once a round."""
        if self.host_pools is None:
            return []
        found: list[PoolView] = []
        for zone in sorted({h.zone_id for h in hosts}):
            found.extend(await self.read_models.where(PoolView, "storage_pool", "zone_id", zone))
        return found

    async def _reconcile_host(self, host: HostView, pools: list[PoolView]) -> list[EffectorResult]:
        hypervisor = self.hypervisor_for(host.libvirt_uri)
        before = await self._vms_of(host.id)
        try:
            domains = await asyncio.to_thread(self._list_domains, host.id, hypervisor)
        except HypervisorError as e:
            # In a thread: letting go of the callback may ask the daemon.
            await asyncio.to_thread(self._unwatch, host.id)
            return self._host_failed(host, e)
        answered = self._host_answered(host)
        after = await self._vms_of(host.id)
        # A VM that changed while the domains were listed had work in flight.
        unstable = {i for i in before.keys() | after.keys() if before.get(i) != after.get(i)}
        stable = [vm for i, vm in after.items() if i not in unstable]
        drifts = [d for d in compare(host.id, stable, domains) if d.aggregate_id not in unstable]
        troubles = await self._ensure_pools(host, hypervisor, pools)
        if self.check_volumes:
            drifts.extend(await self.volume_drift(host, stable, hypervisor))
        for drift in drifts:
            log.warning(
                "drift",
                host_id=str(host.id),
                kind=drift.kind,
                aggregate_id=str(drift.aggregate_id),
                observed=drift.observed,
                expected=drift.expected,
            )
        return [*answered, *troubles, *(self._result(host.id, d) for d in drifts)]

    async def _ensure_pools(
        self, host: HostView, hypervisor: Hypervisor, pools: list[PoolView]
    ) -> list[EffectorResult]:
        """The host's shared pools made sure of; a report for each that
        could not be, once an outage (recorded on the host)."""
        if self.host_pools is None:
            return []
        try:
            troubles = await asyncio.to_thread(self.host_pools.ensure, hypervisor, host, pools)
        except HypervisorError as e:
            # It stopped answering since the listing: the next round sees it.
            log.warning("host_pools_not_checked", host_id=str(host.id), error=str(e))
            return []
        results = [trouble_result(t, self.effector) for t in troubles]
        return [r for r in results if r.work_id not in self._troubles_reported]

    async def _vms_of(self, host_id: UUID) -> dict[UUID, VmView]:
        found: dict[UUID, VmView] = {}
        for field in ("host_id", "last_host_id", "migration_target_id"):
            for vm in await self.read_models.where(VmView, "vm", field, host_id):
                found[vm.id] = vm
        return found

    def _list_domains(self, host_id: UUID, hypervisor: Hypervisor) -> list[DomainState]:
        hypervisor.call("connect", lambda _conn: None, attempts=self.connect_attempts)
        domains = ComputeDriver(hypervisor).list_domains()
        if self.lifecycle_events:
            self._watch(host_id, hypervisor)
        return domains

    def _result(self, host_id: UUID, drift: Drift) -> EffectorResult:
        return EffectorResult(
            work_id=drift_operation_id(host_id, drift),
            kind=drift.kind,
            aggregate_id=drift.aggregate_id,
            version=0,
            outcome="succeeded",
            host_id=host_id,
            observed=drift.observed,
            expected=drift.expected,
            effector=self.effector,
        )

    # -- unreachable hosts ---------------------------------------------------

    def _host_failed(self, host: HostView, error: HypervisorError) -> list[EffectorResult]:
        failures = self._failures.get(host.id, 0) + 1
        self._failures[host.id] = failures
        # The outage's start makes its id: stable while it lasts, new for the
        # next outage (the engine would drop a reused id as a duplicate).
        since = self._down_since.setdefault(host.id, datetime.now(UTC).isoformat())
        log.warning(
            "host_connection_failed",
            host_id=str(host.id),
            uri=host.libvirt_uri,
            failures=failures,
            code=error.code,
            error=error.message,
        )
        if failures < self.down_after or host.id in self._reported_down:
            return []
        return [
            EffectorResult(
                work_id=uuid.uuid5(DRIFT_IDS, f"{host.id}:host.unreachable:{since}"),
                kind="host.unreachable",
                aggregate_id=host.id,
                version=0,
                outcome="succeeded",
                host_id=host.id,
                observed=f"unreachable for {failures} rounds",
                error=error.message,
                error_code=error.code,
                effector=self.effector,
            )
        ]

    def _host_answered(self, host: HostView) -> list[EffectorResult]:
        if self._failures.pop(host.id, 0):
            log.info("host_connection_restored", host_id=str(host.id), uri=host.libvirt_uri)
        self._down_since.pop(host.id, None)
        self._reported_down.discard(host.id)
        if host.liveness == "Up":
            return []
        # Recorded Suspect or Down, and it answers: say so (once per host
        # version: the engine records it once, automation decides).
        return [
            EffectorResult(
                work_id=uuid.uuid5(DRIFT_IDS, f"{host.id}:host.reachable:{host.version}"),
                kind="host.reachable",
                aggregate_id=host.id,
                version=0,
                outcome="succeeded",
                host_id=host.id,
                observed="answering",
                effector=self.effector,
            )
        ]

    # -- volumes ---------------------------------------------------------------

    async def volume_drift(
        self, host: HostView, vms: list[VmView], hypervisor: Hypervisor
    ) -> list[Drift]:
        """Volumes attached to the host's VMs: the VM's host must reach its
        disks whether the pool is shared or local, so that is where they are
        checked. Detached volumes are not checked (which host should hold a
        local pool's volume is not recorded)."""
        # One query for all of the host's VMs, before and after observing
        # (a query per VM made a round cost a round trip per VM).
        mine = [vm.id for vm in vms if vm.host_id in (host.id, None)]
        if not mine:
            return []
        before = await self.read_models.where_in(VolumeView, "volume", "vm_id", mine)
        judged = [v for v in before if v.state in VOLUME_JUDGED and v.pool_id is not None]
        if not judged:
            return []
        observed = await asyncio.to_thread(self._observe_volumes, hypervisor, judged)
        held = sorted({v.vm_id for v in judged if v.vm_id is not None})
        after = {
            v.id: v for v in await self.read_models.where_in(VolumeView, "volume", "vm_id", held)
        }
        drifts: list[Drift] = []
        for volume, seen in zip(judged, observed, strict=True):
            if seen is None or after.get(volume.id) != volume:
                continue  # pool not on this host, or the volume changed meanwhile
            drift = volume_drift(volume, seen)
            if drift is not None:
                drifts.append(drift)
        return drifts

    def _observe_volumes(
        self, hypervisor: Hypervisor, volumes: Iterable[VolumeView]
    ) -> list[tuple[bool, int] | None]:
        storage = StorageDriver(hypervisor)
        seen: list[tuple[bool, int] | None] = []
        for volume in volumes:
            assert volume.pool_id is not None
            try:
                state = storage.observe(
                    self.names.pool(volume.pool_id), self.names.volume(volume.id)
                )
            except PoolMissing:
                seen.append(None)
                continue
            seen.append((state.exists, state.capacity_bytes))
        return seen

    # -- the loop ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile every interval_s (sooner when a lifecycle event arrives)
        until stop is set. A failing round is logged and the loop goes on."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.lifecycle_events:
            start_libvirt_event_loop()
        while not stop.is_set():
            self._wake.clear()
            started = time.monotonic()
            try:
                await self.reconcile_once()
            except asyncpg.UndefinedTableError:
                # The projection worker has not made the read models yet (a
                # first start): not a failure worth a traceback.
                log.info("read_models_not_ready")
            except Exception:
                # The read models or the bus being down must not end the
                # reconciler: the next round tries again.
                log.exception("reconcile_failed")
            ended = time.monotonic()
            stopping = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                interval = min(self.interval_s, self.retry_s) if self._failures else self.interval_s
                await asyncio.wait(
                    {stopping, woken}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (stopping, woken):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self._wake.is_set() and not stop.is_set():
                # One stop or start emits several events (and so may many
                # domains at once): let them settle into one round, and
                # space the rounds they wake by the last one's length.
                spaced = (ended - started) * (1 / self.event_share - 1) - (time.monotonic() - ended)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(self.event_settle_s, spaced))
        for host_id in list(self._watched):  # so the connections can close
            await asyncio.to_thread(self._unwatch, host_id)

    def _watch(self, host_id: UUID, hypervisor: Hypervisor) -> None:
        """Register the lifecycle callback on the host's current connection
        (again after a reconnect). Runs in a worker thread."""
        conn = hypervisor.conn
        if self._watched.get(host_id) is conn:
            return
        self._unwatch(host_id)
        if id(conn) not in self._callbacks:
            try:
                callback = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, hypervisor.uri
                )
            except libvirt.libvirtError as e:
                # Events only speed reconciling up; the periodic round still runs.
                log.warning("lifecycle_events_unavailable", host_id=str(host_id), error=str(e))
                return
            self._callbacks[id(conn)] = (conn, int(callback))
            # A connection that drops (the host died, its libvirtd ended)
            # wakes the loop too: the next round finds out which.
            with contextlib.suppress(libvirt.libvirtError):
                conn.registerCloseCallback(self._on_close, None)
        self._watched[host_id] = conn

    def _unwatch(self, host_id: UUID) -> None:
        """Take the callback off the host's old connection. It holds that
        connection (libvirt keeps a reference for it), so without this the
        connection is never closed and, if still alive, goes on delivering
        its events beside the new one's."""
        conn = self._watched.pop(host_id, None)
        if conn is None or any(other is conn for other in self._watched.values()):
            return  # another host's events still come through it
        _, callback = self._callbacks.pop(id(conn))
        # It goes locally before libvirt asks the daemon, so a dead
        # connection lets go of it too.
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.info("libvirt_connection_closed", reason=reason)
        self._wake_loop()

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, uri: Any) -> None:
        if self.own_acts is not None:
            try:
                domain = UUID(bytes=dom.UUID())
            except (libvirt.libvirtError, ValueError, TypeError):
                domain = None
            if domain is not None and self.own_acts.recent(domain):
                self.echoes_ignored += 1
                return
        self._wake_loop()
        log.debug("lifecycle_event", uri=uri, lifecycle=event, detail=detail)

    def _wake_loop(self) -> None:
        # Called on libvirt's event thread: hand over to the asyncio loop.
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            # The loop may close between the check and the call (shutdown).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)
