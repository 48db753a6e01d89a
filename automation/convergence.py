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
  reason. A paused domain is left alone (reported only): paused is a
  decision someone took on the host, not a failure.
- recorded Stopped (or Allocated), domain running on its host: recorded
  Running there, its capacity reserved (the guest serves users; stopping
  it would be the engine overruling the hypervisor). If the host has no
  room, the drift stays reported and nothing changes.
- in Error after a start or stop that timed out (unsettled: what the
  hypervisor did is unknown): recorded Running there if its domain runs,
  Stopped if it is absent, shut off or crashed, with the reason. No VM
  stays in a transitional state: a step's deadline ends it in this Error,
  and the next reconcile round settles it.
- anything else (Destroyed, Expunged with a domain left, unknown domains,
  volumes): reported as events by the recorder, left alone.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal
from uuid import UUID

import msgspec
import structlog

from cloud_engine.automation.sender import Sender
from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig, EventConsumer, MemoryDeduplicator
from cloud_engine.bus.naming import parse_type, topic_for
from cloud_engine.engine.commands.liveness import ConvergeVm
from cloud_engine.engine.commands.operations import VmOperation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine

log = structlog.get_logger("automation.convergence")

ACTOR = "automation:convergence"
_STOPPED = frozenset({"absent", "shutoff", "crashed"})


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
    def __init__(self, service: CommandService, store: EventStore, config: ConsumerConfig) -> None:
        self.service = service
        self.store = store
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
            if not await self._send(
                ConvergeVm(vm_id=vm.id, to="Stopped", reason=reason, expected_version=vm.version),
                key,
            ):
                return
            if vm.ha:
                await self._send(VmOperation(kind="vm.start", vm_id=vm.id), f"{key}/start")
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
