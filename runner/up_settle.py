"""On start, `up` makes the record agree with what its hosts run.

When `up` stops, its hypervisors stop with it: the lab goes down (every
QEMU with it) and a test driver's domains live in `up`'s memory. VMs the
log still records Running then run nowhere. Before `ready`, each such VM is
stopped through the engine, as a client would: a forced `vm.stop`
operation (actor `up`); the effector finds the domain shut off (or absent),
and the engine records the VM Stopped from that result. Nothing is started
again: which VMs should run after an outage is the operator's decision (or
HA's, on top of the same commands), and it is visible in the history.

A VM whose host still runs it (a lab left running by an `up` that was
killed) is left alone: the record agrees already.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import libvirt
import structlog

from cloud_engine.engine.commands import CommandContext
from cloud_engine.engine.commands.operations import VmOperation
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.logs import lifecycle
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import read_model

log = structlog.get_logger("runner.up_settle")

ACTOR = "up"
# Stop operations wait for the engine's and the effector's consumers, which
# may still be joining their groups (up to 18 s after a broker restart).
SETTLE_TIMEOUT_S = 90.0
_RUNS = frozenset({libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED})


class Settle:
    """Two steps around the engine's and the effector's start: stop()
    before, so the effector's reconciler finds those VMs Stopping (work in
    flight) rather than drifted, and finished() once they run."""

    def __init__(self, service: CommandService, store: EventStore, target: DatabaseTarget) -> None:
        self.service = service
        self.store = store
        self.target = target
        self.stopped: list[VirtualMachine] = []
        self._operations: dict[UUID, UUID] = {}
        self._began = 0.0

    async def stop(self) -> None:
        """Ask the engine to stop every VM recorded Running whose host does
        not run it (the read models must reflect the log: they list them)."""
        self._began = time.monotonic()
        conn = await connect(self.target)
        try:
            rows = await conn.fetch(
                f"SELECT id FROM {read_model(self.target.schema, 'vm')} WHERE state = 'Running'"
            )
        finally:
            await conn.close()
        # The log, not the read model, decides: the row may lag an event.
        store = self.store
        loaded = await asyncio.to_thread(store.load_many, [r["id"] for r in rows])
        running = [
            (vm, vm.host_id)
            for vm in loaded.values()
            if isinstance(vm, VirtualMachine) and vm.state == "Running" and vm.host_id is not None
        ]
        hosts = await asyncio.to_thread(store.load_many, {host for _, host in running})
        for vm, host_id in running:
            host = hosts.get(host_id)
            if not isinstance(host, Host):
                continue
            if await asyncio.to_thread(_runs, host.libvirt_uri, vm.id):
                continue
            context = CommandContext(
                actor=ACTOR,
                request_id=f"up-settle-{vm.id}",
                # Per version: a VM stopped now, started and lost again at a
                # later stop gets a stop of its own then.
                idempotency_key=f"up/settle/{vm.id}/{vm.version}",
            )
            command = VmOperation(kind="vm.stop", vm_id=vm.id, forced=True)
            try:
                result = await self.service.execute_async(command, context)
            except DomainError as e:
                # Another operation holds the VM (one a client asked before
                # the stop): it goes on, and its result updates the record.
                log.warning("vm not settled", vm_id=str(vm.id), reason=str(e))
                continue
            self.stopped.append(vm)
            self._operations[vm.id] = result.aggregate_id

    async def finished(self) -> None:
        """Until every stop asked ended (or SETTLE_TIMEOUT_S passed)."""
        if not self._operations:
            return
        await _finished(self.store, self._operations)
        lifecycle(
            log,
            "recorded stopped the VMs that no longer ran",
            vms=sorted(vm.name for vm in self.stopped),
            took_s=round(time.monotonic() - self._began, 2),
        )


def _runs(uri: str, vm_id: UUID) -> bool:
    """Whether the host at uri runs the VM's domain now."""
    if uri.startswith("test:"):
        # A test driver's domains live in the memory of the process that
        # made them: `up` is starting, so it has none.
        return False
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        # Unreachable: nothing to tell, and nothing to decide on.
        log.warning("host not observed", uri=uri, error=e.get_error_message())
        return True
    try:
        state = conn.lookupByUUIDString(str(vm_id)).state()[0]
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        log.warning("domain not observed", uri=uri, vm_id=str(vm_id), error=e.get_error_message())
        return True
    finally:
        conn.close()
    return bool(state in _RUNS)


async def _finished(store: EventStore, operations: dict[UUID, UUID]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    pending = dict(operations)
    while pending:
        found = await asyncio.to_thread(store.load_many, list(pending.values()))
        for vm_id, op_id in list(pending.items()):
            operation = found.get(op_id)
            if isinstance(operation, Operation) and operation.finished:
                if operation.status != "succeeded":
                    log.warning("vm stop did not succeed", vm_id=str(vm_id), state=operation.status)
                del pending[vm_id]
        if not pending:
            return
        if time.monotonic() > deadline:
            log.warning(
                "vm stops still running",
                vms=sorted(str(v) for v in pending),
                note="their operations go on; GET /v1/operations/<id> shows them",
            )
            return
        await asyncio.sleep(0.2)
