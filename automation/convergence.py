"""Convergence of power state: drift becomes a decision.

The hypervisor is the authority on what runs, the log on what should. The
effector's reconciler reports drift, the recorder records it
(`vm.drift_observed`, judged against a VM version); this consumer decides,
on the VM as the log has it, only if nothing happened to it since (same
version, no operation holding it) and only for VMs whose host is Up (the
VMs of a host that is not are HA's, after the fence):

- recorded Running, domain absent, shut off or crashed: HA-enabled ->
  recorded Stopped with the reason and started again (`vm.start`, the
  planner may pick another host); otherwise recorded Stopped with the
  reason. One command (ConvergeVm with restart_if_ha), one transaction:
  as two, an automation killed between them would leave an HA VM Stopped
  for good (the drift, delivered again, was judged at a version the VM
  has left). The start's id is derived from the VM and the version it was
  judged at, so asked again it is never a second start. A paused domain
  is left alone (reported only): paused is a decision someone took on
  the host, not a failure.
- recorded Stopped (or Allocated), domain running on its host: recorded
  Running there, its capacity reserved (the guest serves users; stopping
  it would be the engine overruling the hypervisor). If the host has no
  room, the drift stays reported and nothing changes.
- in Error after a start or stop that timed out (unsettled: what the
  hypervisor did is unknown): recorded Running there if its domain runs,
  Stopped if it is absent, shut off or crashed, with the reason. No VM
  stays in a transitional state: a step's deadline ends it in this Error,
  and the next reconcile round settles it.
- recorded Destroyed, domain running or paused (the destroy's work
  failed or was lost: libvirt unreachable at that moment, a crash between
  attempts):
  the effector is asked again to power it off (`vm.domain_stop_requested`
  with the reason; its capacity was released with the destroy, so a guest
  left running is an overcommit and a leaked server). Recorded Expunged,
  domain still defined: asked again to undefine it. Not before the
  request that should have done it (the destroy, the expunge, or the last
  such ask) is `stop_grace_s` old: work merely queued in an effector's
  backlog is not asked twice, and a domain that will not go is asked
  again at most once a grace.
- anything else (other Errors, unknown domains, volumes): reported as
  events by the recorder, left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import msgspec
import structlog

from cloud_engine.automation.sender import Sender
from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig, EventConsumer, MemoryDeduplicator
from cloud_engine.bus.naming import parse_type, topic_for
from cloud_engine.engine.commands.liveness import (
    ConvergeVm,
    RequestVmDomainStop,
    converge_restart_id,
)
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine

log = structlog.get_logger("automation.convergence")

ACTOR = "automation:convergence"
_STOPPED = frozenset({"absent", "shutoff", "crashed"})
# A destroyed VM's domain left on: running, or paused (it holds the memory
# the destroy gave back all the same).
_LEFT_ON = frozenset({"running", "paused"})
# How long the request that should have removed a domain (a destroy, an
# expunge, a previous ask) is left to work before convergence asks again.
STOP_GRACE_S = 30.0
# The VM's events that asked an effector to power off or undefine its domain
# (an expunge that failed had tried to).
_ASKED = frozenset({"Destroyed", "Expunged", "ExpungeFailed", "DomainStopRequested"})


class _Drift(msgspec.Struct):
    observed: str
    expected: str


def convergence_config(bootstrap: str, prefix: str) -> ConsumerConfig:
    return ConsumerConfig(
        bootstrap=bootstrap,
        group_id=f"{prefix}.automation.convergence",
        topics=[topic_for(prefix, "vm")],
        topic_prefix=prefix,
        max_records=200,
        concurrent_keys=True,
    )


class Converger:
    def __init__(
        self,
        service: CommandService,
        store: EventStore,
        config: ConsumerConfig,
        *,
        stop_grace_s: float = STOP_GRACE_S,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.service = service
        self.store = store
        self.stop_grace_s = stop_grace_s
        self.now = now
        self.domain_stops = 0  # leftover domains this converger asked to stop
        self.consumer = EventConsumer(config, self.handle, MemoryDeduplicator())
        self._send = Sender(service, ACTOR, log, refused="not_converged", recorded="converged")

    async def run(self, stop: asyncio.Event) -> None:
        task = asyncio.create_task(self.consumer.run())
        try:
            await asyncio.wait(
                [task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self.consumer.stop()
            await asyncio.gather(task, return_exceptions=True)

    async def handle(self, event: CloudEvent, _tx: Any) -> None:
        name = parse_type(event.type)
        if name is None or name.aggregate != "vm" or name.name != "drift_observed":
            return
        drift = msgspec.json.decode(event.data, type=_Drift)
        vm = await asyncio.to_thread(self.store.load, event.aggregate_id)
        if not isinstance(vm, VirtualMachine) or vm.version != event.aggregate_version:
            return  # something happened since: the next round judges again
        await self.decide(vm, drift.observed)

    async def decide(self, vm: VirtualMachine, observed: str) -> None:
        host_id = vm.host_id or vm.last_host_id
        host = await asyncio.to_thread(self.store.load, host_id) if host_id else None
        if not isinstance(host, Host) or host.liveness != "Up":
            return  # a host not Up: its VMs are HA's to deal with
        key = f"converge/{vm.id}/{vm.version}"
        if vm.is_unsettled():
            await self._settle(vm, host, observed, key)
        elif vm.state == "Running" and observed in _STOPPED:
            verdict = "restarted (HA)" if vm.ha else "recorded Stopped (not HA-enabled)"
            reason = f"its domain was found {observed} on host {host.name}: {verdict}"
            converge = ConvergeVm(
                vm_id=vm.id,
                to="Stopped",
                reason=reason,
                expected_version=vm.version,
                restart_if_ha=True,
            )
            if await self._send(converge, key) and vm.ha:
                start = converge_restart_id(vm.id, vm.version)
                log.info("converge_restart", vm_id=str(vm.id), operation_id=str(start))
        elif vm.state == "Stopped" and observed == "running":
            reason = (
                f"its domain was found running on host {host.name}: recorded Running"
                " (the hypervisor is the authority on what runs)"
            )
            await self._send(
                ConvergeVm(
                    vm_id=vm.id,
                    to="Running",
                    reason=reason,
                    host_id=host.id,
                    expected_version=vm.version,
                ),
                key,
            )
        elif (vm.state == "Destroyed" and observed in _LEFT_ON) or (
            vm.state == "Expunged" and observed != "absent"
        ):
            await self._stop_leftover(vm, host, observed, key)

    async def _stop_leftover(self, vm: VirtualMachine, host: Host, observed: str, key: str) -> None:
        """A domain still there after the log said it went: the effector is
        asked again, once the request that should have done it had its grace."""
        asked = await asyncio.to_thread(self._last_asked, vm.id)
        age_s = None if asked is None else (self.now() - asked).total_seconds()
        fields = dict(vm_id=str(vm.id), host=host.name, state=vm.state, observed=observed)
        if age_s is not None and age_s < self.stop_grace_s:
            # Its work may still wait in an effector's backlog.
            log.info("domain_stop_deferred", asked_s_ago=round(age_s, 1), **fields)
            return
        action = "power it off" if vm.state == "Destroyed" else "power it off and undefine it"
        reason = (
            f"its domain was found {observed} on host {host.name} though the VM is"
            f" {vm.state}: the effector is asked again to {action}"
        )
        if await self._send(
            RequestVmDomainStop(vm_id=vm.id, reason=reason, expected_version=vm.version),
            f"{key}/domain-stop",
        ):
            self.domain_stops += 1
            log.warning("domain_stop_requested", reason=reason, **fields)

    def _last_asked(self, vm_id: UUID) -> datetime | None:
        """When the VM's domain was last asked to go (None: never)."""
        for event in reversed(self.store.events_of(vm_id)):
            if type(event).__name__ in _ASKED:
                return event.timestamp  # type: ignore[attr-defined, no-any-return]
        return None

    async def _settle(self, vm: VirtualMachine, host: Host, observed: str, key: str) -> None:
        """A start or stop that timed out: the record becomes what the
        domain shows. Not restarted even if HA-enabled: a stop may be what
        timed out, and nobody asked for a start since."""
        if observed == "running":
            to: Literal["Running", "Stopped"] = "Running"
            host_id: UUID | None = host.id
        elif observed in _STOPPED:
            to, host_id = "Stopped", None
        else:
            return  # paused: someone's decision on the host; stays reported
        reason = (
            f"{vm.last_error}; its domain was then found {observed} on host {host.name}:"
            f" recorded {to}"
        )[-500:]  # a command's reason is at most 500 characters; the end says most
        await self._send(
            ConvergeVm(
                vm_id=vm.id, to=to, reason=reason, host_id=host_id, expected_version=vm.version
            ),
            key,
        )

    @property
    def decisions(self) -> int:
        """Commands this converger had recorded."""
        return self._send.sent
