"""HA: the VMs of a host that is Down and fenced.

Only after the fence (automation/liveness.py records it) is anything of
the host touched: every VM it ran is recorded Stopped with the reason
(ConvergeVm), then the HA-enabled ones are started through `vm.start`
operations, highest `ha_priority` first; the planner places them on other
hosts within capacity (a Down host takes nothing), and a VM nothing fits
stays Stopped with the start's failure. The others stay Stopped with the
reason.

Idempotent, so a killed automation resumes: a VM still recorded Running on
the host is converged, a Stopped one whose record says this host's fence
stopped it is started under an idempotency key made of the VM and the
host's fence (the same key gives the same operation, never a second
start). Even if everything else went wrong, a second QEMU on the same disk
is refused by the hosts' lock manager (virtlockd, leases on the shared
pool).
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import structlog

from cloud_engine.automation.reads import Reads
from cloud_engine.engine.commands.base import CommandContext
from cloud_engine.engine.commands.liveness import ConvergeVm
from cloud_engine.engine.commands.operations import VmOperation
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine

log = structlog.get_logger("automation.ha")

ACTOR = "automation:ha"


def fence_reason(host: Host) -> str:
    """Names the fence (one HA run per fence), so a resumed run finds the
    VMs it recorded Stopped."""
    at = host.fenced_at.isoformat() if host.fenced_at else "unknown"
    return f"host {host.name} is down and was fenced at {at}"


class HaRunner:
    def __init__(self, service: CommandService, store: EventStore, reads: Reads) -> None:
        self.service = service
        self.store = store
        self.reads = reads
        self.started: list[UUID] = []  # operations this process started

    async def run(self, host: Host) -> None:
        """One pass for a Down, fenced host (the host as loaded: its version
        names the run)."""
        reason = fence_reason(host)
        ids = set(await self.reads.vm_ids("host_id", host.id))
        ids |= set(await self.reads.vm_ids("last_host_id", host.id))
        loaded = await asyncio.to_thread(self.store.load_many, list(ids))
        vms = [v for v in loaded.values() if isinstance(v, VirtualMachine)]
        for vm in vms:
            if vm.state == "Running" and vm.host_id == host.id:
                await self._converge(vm, reason)
        # Again from the log: the converged ones are Stopped now.
        loaded = await asyncio.to_thread(self.store.load_many, [v.id for v in vms])
        stopped = [
            v
            for v in loaded.values()
            if isinstance(v, VirtualMachine)
            and v.state == "Stopped"
            and v.converged_reason == reason
            and v.last_host_id == host.id
        ]
        for vm in sorted(stopped, key=lambda v: (-v.ha_priority, str(v.id))):
            if vm.ha:
                await self._start(vm, host, reason)

    async def _converge(self, vm: VirtualMachine, reason: str) -> None:
        context = CommandContext(
            actor=ACTOR,
            request_id=f"ha-stop-{vm.id}",
            idempotency_key=f"ha/converge/{vm.id}/{vm.version}",
        )
        try:
            await self.service.execute_async(
                ConvergeVm(vm_id=vm.id, to="Stopped", reason=reason, expected_version=vm.version),
                context,
            )
            log.info("ha_recorded_stopped", vm_id=str(vm.id), name=vm.name, ha=vm.ha, reason=reason)
        except DomainError as e:
            log.warning("ha_not_recorded_stopped", vm_id=str(vm.id), reason=str(e))

    async def _start(self, vm: VirtualMachine, host: Host, reason: str) -> None:
        context = CommandContext(
            actor=ACTOR,
            request_id=f"ha-start-{vm.id}",
            idempotency_key=f"ha/start/{vm.id}/{reason}",
        )
        try:
            result = await self.service.execute_async(
                VmOperation(kind="vm.start", vm_id=vm.id), context
            )
        except DomainError as e:
            log.warning("ha_not_started", vm_id=str(vm.id), reason=str(e))
            return
        if not result.replayed:
            self.started.append(result.aggregate_id)
            log.info(
                "ha_restart",
                vm_id=str(vm.id),
                name=vm.name,
                priority=vm.ha_priority,
                operation_id=str(result.aggregate_id),
            )
