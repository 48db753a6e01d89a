"""One command on its way through the command service."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from uuid import UUID

import msgspec

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.commands import Command, CommandContext, CommandResult
from cloud_engine.engine.commands.base import AggregateVersion, Outcome
from cloud_engine.engine.commands.operations import PlaceOperation, VmOperation, VolumeOperation
from cloud_engine.engine.metadata import EventMeta
from cloud_engine.engine.operations.guard import guard_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.working_set import WorkingSet

_encoder = msgspec.json.Encoder()


class Submission:
    __slots__ = ("command", "context", "future", "hash", "meta", "submitted")

    def __init__(self, command: Command, context: CommandContext) -> None:
        self.command = command
        self.context = context
        # When it was handed to the writer: its wait for a batch is measured.
        self.submitted = time.perf_counter()
        self.future: Future[CommandResult] = Future()
        self.hash = b""
        if context.idempotency_key is not None and context.request_digest is not None:
            self.hash = context.request_digest
        elif context.idempotency_key is not None:
            digest = hashlib.sha256(type(command).__name__.encode())
            digest.update(_encoder.encode(command))
            self.hash = digest.digest()
        request_id = context.request_id or uuid.uuid4().hex
        self.meta = EventMeta(
            actor=context.actor,
            request_id=request_id,
            correlation_id=context.correlation_id or request_id,
            causation_id=context.causation_id,
        )

    @property
    def key(self) -> tuple[str, str] | None:
        """Idempotency keys are scoped per actor."""
        if self.context.idempotency_key is None:
            return None
        return (self.context.actor, self.context.idempotency_key)


class Executed:
    """A command whose handler ran; its events are not stored yet."""

    __slots__ = ("collected", "outcome", "submission")

    def __init__(
        self,
        submission: Submission,
        outcome: Outcome,
        collected: list[tuple[Aggregate, list[object]]],
    ) -> None:
        self.submission = submission
        self.outcome = outcome
        self.collected = collected

    def result(self, position: int | None) -> CommandResult:
        return CommandResult(
            command=type(self.submission.command).__name__,
            aggregate_id=self.outcome.aggregate_id,
            value=self.outcome.value,
            versions=tuple(
                AggregateVersion(a.id, type(a).__name__, a.version) for a, _ in self.collected
            ),
            position=position,
        )


def referenced_ids(command: Command) -> Iterator[UUID]:
    """Every aggregate id a command names, for one prefetch per batch, and
    for a command that starts an operation the guards of what it names."""
    guarded = isinstance(command, VmOperation | VolumeOperation)
    for name in command.__struct_fields__:
        value = getattr(command, name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, UUID):
                yield v
                if guarded:
                    yield guard_id(v)


def placed_ids(command: Command, ws: WorkingSet) -> Iterator[UUID]:
    """What a placement reads besides the ids it names: its operation's VM
    and volumes (a client's command made them; this process has not cached
    them yet). After referenced_ids' prefetch, for a second one per batch."""
    if isinstance(command, PlaceOperation):
        op = ws.find(Operation, command.operation_id)
        if op is not None and op.current_step == "place":
            yield op.resource_id
            yield from op.params.volume_ids
