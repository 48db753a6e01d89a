"""host.ha: fence -> record -> restart, one HA run of a host that is Down
and fenced, as one operation an operator and an integrator can follow.

The work is automation's (automation/ha.py), through commands like any
client's; this kind records where the run stands:

    fence    done as the run begins: the host is Down and fenced (the fence
             is its event, host.fenced; nothing of the host is touched
             before it)
    record   the host's VMs recorded Stopped with the fence as the reason
             (ReportHaRun, stage "recorded")
    restart  one vm.start per HA-enabled VM (params.vm_ids, highest
             priority first), each with an id derived from this operation
             (restart_id), so a resumed run never asks twice; done when
             every one has ended. A VM that could not be restarted (no
             host fits, its start failed) fails the run with its reason,
             after the others ended: the run's error lists them.

One run per fence: its id is derived from the host and the fence's time
(automation/ha.py), and it holds the host's guard, so no maintenance
starts on a host being recovered. Its steps wait on vm.start operations
that have deadlines of their own, so it has none.

Its list is fixed when it begins, but a VM can still come to be recorded
Running on the host afterwards: a live migration off it that was in flight
(Migrating, so not listed) and whose failure is answered late puts the VM
back on its source. The fence powered it off all the same, so such a late
VM is recorded Stopped and, if HA-enabled, started again under an id
derived from the run, the VM and the version it was judged at
(late_restart_id; RecoverLateOnHa, engine/commands/ha.py), for as long as
the host is Down and fenced, whether or not the run has ended.
"""

from __future__ import annotations

import uuid
from uuid import UUID

from cloud_engine.engine.errors import InvalidTransition
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.operations import guard
from cloud_engine.engine.operations.kind import OperationKind, Request
from cloud_engine.engine.operations.operation import REASON_MAX, Operation, OperationParams
from cloud_engine.engine.unit_of_work import UnitOfWork

HA_RUN_IDS = UUID("6f1d2c38-5e0b-4a57-9a43-1c2e8b7d9f60")


def run_id(host_id: UUID, fence: str) -> UUID:
    """The one HA run of a host's fence (fence: the fence's time, as text)."""
    return uuid.uuid5(HA_RUN_IDS, f"{host_id}/{fence}")


def restart_id(run: UUID, vm_id: UUID) -> UUID:
    """The one vm.start an HA run asks for a VM."""
    return uuid.uuid5(run, f"start:{vm_id}")


def late_restart_id(run: UUID, vm_id: UUID, version: int) -> UUID:
    """The one vm.start an HA run asks for a VM that was recorded Running on
    its host after it began (version: the VM's, as it was found Running
    there; a VM that comes back there later is found at another version)."""
    return uuid.uuid5(run, f"late-start:{vm_id}/{version}")


class HostHa(OperationKind[Host]):
    name = "host.ha"
    resource_type = "host"
    steps = ("fence", "record", "restart")
    deadline = False

    def prepare(self, uow: UnitOfWork, resource: Host, request: Request) -> OperationParams:
        return OperationParams(vm_ids=request.vm_ids)

    def begin(self, uow: UnitOfWork, op: Operation, resource: Host, request: Request) -> None:
        if resource.liveness != "Down" or not resource.fenced:
            raise InvalidTransition(
                f"host {resource.id}",
                f"{resource.state}/{resource.liveness}",
                "recover (HA needs it Down and fenced)",
                owner=resource.id,
            )
        op.complete_step("fence")

    def advance(self, uow: UnitOfWork, op: Operation) -> None:
        """Driven by automation's reports; events move nothing."""

    def report(
        self, uow: UnitOfWork, op: Operation, stage: str, remaining: int, failed: tuple[str, ...]
    ) -> None:
        """Automation's finding: the VMs recorded Stopped ("recorded"), or how
        many restarts are still running and which could not be done
        ("restarting")."""
        if op.finished:
            return
        if stage == "recorded" and op.current_step == "record":
            op.complete_step("record")
            return
        if stage != "restarting" or op.current_step != "restart" or remaining:
            return
        if failed:
            op.fail(("not restarted: " + "; ".join(failed))[:REASON_MAX], compensate=False)
        else:
            op.complete_step("restart")
        guard.release(uow, op.resource_id, op.id)

    def fail(self, uow: UnitOfWork, op: Operation, reason: str, *, timed_out: bool) -> None:
        if op.status not in ("pending", "running"):
            return
        op.fail(reason, compensate=False)
        guard.release(uow, op.resource_id, op.id)
