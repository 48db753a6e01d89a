"""Operation: one piece of work a command started (deploy a VM, stop it,
resize a volume), its steps, status, timestamps and error.

An operation is event-sourced like everything else, so a crashed engine
finds every unfinished operation in the log and resumes or compensates it;
nothing needs a manual fix. Steps are recorded in the same transaction as
what they do (see engine/orchestration), so an operation's record never
disagrees with the resources it changed.

Status: pending -> running -> succeeded, or -> compensating -> compensated
when a step failed after earlier steps changed something, or -> failed when
a failure left nothing to undo.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal, get_args
from uuid import UUID

import msgspec
from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.errors import InvalidTransition

OperationStatus = Literal[
    "pending", "running", "succeeded", "failed", "compensating", "compensated"
]
OPERATION_STATUSES: Final[tuple[OperationStatus, ...]] = get_args(OperationStatus)
FINISHED: Final[frozenset[str]] = frozenset({"succeeded", "failed", "compensated"})
StepStatus = Literal["pending", "done", "failed"]
REASON_MAX = 1000


class OperationParams(msgspec.Struct, frozen=True, kw_only=True):
    """What the operation was asked to do beyond its resource (all optional:
    each kind reads the fields it needs)."""

    # The snapshot a volume operation makes or reverts to; the ISO vm.attach_iso inserts.
    target_id: UUID | None = None
    host_id: UUID | None = None  # a caller-named host (start, deploy, migrate)
    source_host_id: UUID | None = None  # where a migrating VM ran
    vm_id: UUID | None = None  # the VM a volume operation attaches to or touches
    forced: bool = False
    size_bytes: int | None = None
    device_id: int | None = None
    strategy: str | None = None
    volume_ids: tuple[UUID, ...] = ()  # volumes the operation created
    affinity: str | None = None  # "affinity" or "anti-affinity" for the VM's group
    affinity_strict: bool = True
    cpus: int | None = None  # vm.scale: the new size
    ram_mb: int | None = None
    pool_id: UUID | None = None  # volume.migrate: the pool it moves to ...
    source_pool_id: UUID | None = None  # ... from this one
    vm_ids: tuple[UUID, ...] = ()  # host.ha: the HA-enabled VMs it restarts, in order


class Step(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    status: StepStatus = "pending"
    finished_at: datetime | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class Operation(Aggregate):
    entity = "operation"

    @event("Created")
    def __init__(
        self,
        kind: str,
        resource_type: str,
        resource_id: UUID,
        account: str,
        steps: tuple[str, ...],
        params: OperationParams,
        created_at: datetime,
    ) -> None:
        self.kind = kind
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.account = account
        self.steps = tuple(Step(name=s) for s in steps)
        self.params = params
        self.status: OperationStatus = "pending"
        self.created_at = created_at
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.error: str | None = None
        self.failed_step: str | None = None
        self.chosen_host_id: UUID | None = None

    @classmethod
    def create(
        cls,
        *,
        kind: str,
        resource_type: str,
        resource_id: UUID,
        account: str,
        steps: tuple[str, ...],
        params: OperationParams | None = None,
        id: UUID | None = None,
    ) -> Operation:
        require_name(kind, "kind")
        require(bool(steps), "an operation needs at least one step", field="steps")
        require(len(set(steps)) == len(steps), "step names must not repeat", field="steps")
        op: Operation = cls._new(
            id=id,
            kind=kind,
            resource_type=resource_type,
            resource_id=resource_id,
            account=account,
            steps=tuple(steps),
            params=params or OperationParams(),
            created_at=_now(),
        )
        return op

    # Reading -------------------------------------------------------------------

    @property
    def state(self) -> str:  # type: ignore[override]
        # The common state column of every read model.
        return self.status

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def current_step(self) -> str | None:
        """The first step not done yet (None once all are done)."""
        for step in self.steps:
            if step.status != "done":
                return step.name
        return None

    @property
    def waiting_since(self) -> datetime:
        """When the current step began: the last step's end, or the creation."""
        ends = [s.finished_at for s in self.steps if s.finished_at is not None]
        return max([self.created_at, *ends])

    def done(self, step: str) -> bool:
        return any(s.name == step and s.status == "done" for s in self.steps)

    # Commands ------------------------------------------------------------------

    def complete_step(self, step: str) -> None:
        """Record a step done; must be the current one. Idempotence lives in
        the callers: they check current_step before acting."""
        if self.status not in ("pending", "running") or self.current_step != step:
            raise InvalidTransition(f"operation {self.id}", self.status, f"complete step {step}")
        self._step_completed(step, _now())
        if self.current_step is None:
            self._succeeded(_now())

    def choose_host(self, host_id: UUID) -> None:
        """Record the host the planner chose (what a failed migration gives back)."""
        if self.chosen_host_id != host_id:
            self._host_chosen(host_id)

    def fail(self, reason: str, *, compensate: bool) -> None:
        """A step failed; with compensate the engine now undoes what earlier
        steps did, else the operation ends failed as it is."""
        if self.status not in ("pending", "running"):
            raise InvalidTransition(f"operation {self.id}", self.status, "fail")
        require(bool(reason.strip()), "reason must not be empty", field="reason")
        self._failed(reason[:REASON_MAX], self.current_step, compensate, _now())

    def compensated(self) -> None:
        if self.status != "compensating":
            raise InvalidTransition(f"operation {self.id}", self.status, "end compensation")
        self._compensated(_now())

    # Events --------------------------------------------------------------------

    @event("StepCompleted")
    def _step_completed(self, step: str, at: datetime) -> None:
        if self.started_at is None:
            self.started_at = at
        self.status = "running"
        self.steps = tuple(
            msgspec.structs.replace(s, status="done", finished_at=at) if s.name == step else s
            for s in self.steps
        )

    @event("HostChosen")
    def _host_chosen(self, host_id: UUID) -> None:
        self.chosen_host_id = host_id

    @event("Succeeded")
    def _succeeded(self, at: datetime) -> None:
        self.status = "succeeded"
        self.finished_at = at

    @event("Failed")
    def _failed(self, reason: str, step: str | None, compensate: bool, at: datetime) -> None:
        self.error = reason
        self.failed_step = step
        self.steps = tuple(
            msgspec.structs.replace(s, status="failed", finished_at=at) if s.name == step else s
            for s in self.steps
        )
        if compensate:
            self.status = "compensating"
        else:
            self.status = "failed"
            self.finished_at = at

    @event("Compensated")
    def _compensated(self, at: datetime) -> None:
        self.status = "compensated"
        self.finished_at = at
