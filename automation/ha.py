"""HA: the VMs of a host that is Down and fenced, as one host.ha operation
(engine/operations/host_ha.py: fence -> record -> restart).

Only after the fence (automation/liveness.py records it) is anything of
the host touched: every VM it ran is recorded Stopped with the reason
(ConvergeVm), then the HA-enabled ones are started through `vm.start`
operations, highest `ha_priority` first; the planner places them on other
hosts within capacity (a Down host takes nothing), and a VM nothing fits
stays Stopped with the start's failure. The others stay Stopped with the
reason.

Idempotent, so a killed automation resumes: the run's id is derived from
the host and its fence, and it lists the VMs it restarts when it begins; a
VM still recorded Running on the host is converged, and each restart is a
vm.start whose id is derived from the run and the VM (asked again, it is
the same operation, never a second start). Even if everything else went
wrong, a second QEMU on the same disk is refused by the hosts' lock
manager (virtlockd, leases on the shared pool).

The list is fixed when the run begins, but a VM can be recorded Running
on the host later: a live migration off it that was in flight (Migrating,
so not listed) and failed puts the VM back on its source when the failure
is answered, possibly after the run ended. The fence powered it off all
the same, so every pass, for as long as the host is Down and fenced, looks
for such late VMs: each is recorded Stopped with the fence as the reason
and, if HA-enabled, started again, in one command (RecoverLateOnHa) whose
vm.start id is derived from the run, the VM and the version it was found
at, so it too is asked once. A pass is done (the host may be declared up
again) only once the run has ended and no VM is recorded Running there.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import structlog

from cloud_engine.automation.reads import Reads
from cloud_engine.automation.sender import Sender
from cloud_engine.engine.commands.base import CommandContext
from cloud_engine.engine.commands.ha import (
    BeginHaRun,
    RecoverLateOnHa,
    ReportHaRun,
    RestartOnHa,
)
from cloud_engine.engine.commands.liveness import ConvergeVm
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.host_ha import restart_id, run_id
from cloud_engine.engine.operations.operation import Operation
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
        self._noted: set[tuple[str, UUID, int, str]] = set()  # refusals logged
        self._send = Sender(service, ACTOR, log, refused="ha_not_recorded")

    async def run(self, host: Host) -> bool:
        """One pass for a Down, fenced host (the host as loaded: its fence
        names the run); True once its host.ha operation has ended and no VM
        is recorded Running on the host any more."""
        reason = fence_reason(host)
        at = host.fenced_at.isoformat() if host.fenced_at else "unknown"
        ha_id = run_id(host.id, at)
        ids = set(await self.reads.vm_ids("host_id", host.id))
        ids |= set(await self.reads.vm_ids("last_host_id", host.id))
        # And what the host itself holds, by the log: a VM that came to it a
        # moment ago may not be in the read models yet.
        ids |= set(host.reservations)
        loaded = await asyncio.to_thread(self.store.load_many, list(ids))
        vms = [v for v in loaded.values() if isinstance(v, VirtualMachine)]
        run = await asyncio.to_thread(self.store.load, ha_id)
        if not isinstance(run, Operation):
            # The VMs it ran, as the fence left them (a resumed pass finds the run).
            ours = [
                v
                for v in vms
                if v.ha
                and (
                    (v.state == "Running" and v.host_id == host.id)
                    or (v.state == "Stopped" and v.converged_reason == reason)
                )
            ]
            ours.sort(key=lambda v: (-v.ha_priority, str(v.id)))
            begun = BeginHaRun(
                host_id=host.id, operation_id=ha_id, vm_ids=tuple(v.id for v in ours)
            )
            if not await self._send(begun, f"ha/run/{ha_id}"):
                return False
            run = await asyncio.to_thread(self.store.load, ha_id)
            assert isinstance(run, Operation)
            log.info("ha_run_begun", host=host.name, operation_id=str(ha_id), vms=len(ours))
        here = [v for v in vms if v.state == "Running" and v.host_id == host.id]
        if run.finished and not here:
            return True  # as loaded this pass: nothing to send, nothing to read again
        # Recorded Running here, but the run restarts none of these: it has
        # ended, or the VM is HA-enabled and came after the run listed its
        # VMs. The others are the run's to record.
        late = [v for v in here if run.finished or (v.ha and v.id not in run.params.vm_ids)]
        settled = [await self._late(run.id, v, reason) for v in late]
        if not run.finished:
            listed = {v.id for v in late}
            await self._drive(run, [v for v in here if v.id not in listed], reason)
            run = await asyncio.to_thread(self.store.load, ha_id)
        if not (isinstance(run, Operation) and run.finished and all(settled)):
            return False
        # A VM this pass could not record Stopped (an operation held it) is
        # still Running here, though the run may have just ended: the VMs
        # read again now, not as the pass began.
        now = await asyncio.to_thread(self.store.load_many, [v.id for v in vms])
        return not any(
            isinstance(v, VirtualMachine) and v.state == "Running" and v.host_id == host.id
            for v in now.values()
        )

    async def _drive(self, run: Operation, running: list[VirtualMachine], reason: str) -> None:
        """The run's record and restart steps, as far as they go this pass
        (running: its host's VMs still recorded Running there)."""
        for vm in running:
            await self._converge(vm, reason)
        await self._send(ReportHaRun(operation_id=run.id, stage="recorded"), None)
        failed: list[str] = []
        remaining = 0
        for vm_id in run.params.vm_ids:
            start = await self._start(run.id, vm_id, failed)
            if start is None:
                continue
            op = await asyncio.to_thread(self.store.load, start)
            if not isinstance(op, Operation) or not op.finished:
                remaining += 1
            elif op.status != "succeeded":
                failed.append(f"vm {vm_id}: {op.error or op.status}")
        await self._send(
            ReportHaRun(
                operation_id=run.id,
                stage="restarting",
                remaining=remaining,
                failed=tuple(f[:500] for f in failed),
            ),
            None,
        )

    async def _late(self, ha_id: UUID, vm: VirtualMachine, reason: str) -> bool:
        """A VM recorded Running on the fenced host that the run does not
        restart: recorded Stopped and, if HA-enabled, started again, in one
        command keyed by the version it was found at (a resumed pass asks
        nothing twice). True if recorded; refused (it moved on, or an
        operation holds it), the next pass judges again."""
        verdict = "restarted (HA)" if vm.ha else "recorded Stopped (not HA-enabled)"
        why = f"{reason}; it was recorded Running there after its HA run began: {verdict}"
        context = CommandContext(
            actor=ACTOR,
            request_id=f"ha-late-{vm.id}",
            idempotency_key=f"ha/late/{ha_id}/{vm.id}/{vm.version}",
        )
        command = RecoverLateOnHa(
            operation_id=ha_id, vm_id=vm.id, reason=why[:500], expected_version=vm.version
        )
        try:
            result = await self.service.execute_async(command, context)
        except DomainError as e:
            self._refused("ha_late_not_recorded", vm, e)
            return False
        log.info(
            "ha_late_vm_recorded_stopped", vm_id=str(vm.id), name=vm.name, ha=vm.ha, reason=why
        )
        if result.value is not None:
            start = UUID(str(result.value))
            if start not in self.started:
                self.started.append(start)
            log.info("ha_late_restart", vm_id=str(vm.id), operation_id=str(start))
        return True

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
            self._refused("ha_not_recorded_stopped", vm, e)

    def _refused(self, event: str, vm: VirtualMachine, error: DomainError) -> None:
        """Logged once per VM version and reason: an operation holding the VM
        (until its step's deadline, 600 s by default) is refused every pass,
        once a second."""
        noted = (event, vm.id, vm.version, str(error))
        if noted in self._noted:
            return
        if len(self._noted) > 10_000:
            self._noted.clear()
        self._noted.add(noted)
        log.warning(event, vm_id=str(vm.id), reason=str(error))

    async def _start(self, ha_id: UUID, vm_id: UUID, failed: list[str]) -> UUID | None:
        """The run's vm.start of the VM (asked once: its id is derived); None
        if it was refused (the reason joins failed)."""
        context = CommandContext(actor=ACTOR, request_id=f"ha-start-{vm_id}")
        try:
            result = await self.service.execute_async(
                RestartOnHa(operation_id=ha_id, vm_id=vm_id), context
            )
        except DomainError as e:
            start = restart_id(ha_id, vm_id)
            if isinstance(await asyncio.to_thread(self.store.load, start), Operation):
                return start  # asked before; the run moved on meanwhile
            log.warning("ha_not_started", vm_id=str(vm_id), reason=str(e))
            failed.append(f"vm {vm_id}: {e}")
            return None
        if result.aggregate_id not in self.started:
            self.started.append(result.aggregate_id)
            log.info("ha_restart", vm_id=str(vm_id), operation_id=str(result.aggregate_id))
        return result.aggregate_id
