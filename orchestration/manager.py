"""The engine's process manager: drives every Operation to its end.

It consumes the operation, vm, volume and snapshot topics through the
consumer base. An operation's own Created event, every event whose
correlation id is an operation's id (the engine sends each step's command
with that correlation id, the effectors copy it into their results, the
recorder into the events it records), and an effector result recorded on a
resource whose guard an operation holds (work a client's command asked for
carries the client's correlation id) make it drive that operation: plan and
place it when it waits for a host, else advance it. The events of the
engine's own steps are not triggers: each step did all its state called
for. Placing and advancing are commands idempotent against the operation's
recorded state, so a redelivered event, a second engine on the same
partitions after a rebalance, or the sweep doing the same a moment later
changes nothing twice.

The sweep (at start and every few seconds) drives every unfinished
operation from the read model: an engine killed at any point resumes or
compensates whatever it was doing, with nothing to fix by hand. A step that
waits on the effectors longer than step_deadline_s is failed (and
compensated) with that reason, so an effector that never answers leaves no
operation running forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import OrderedDict
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import structlog

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig, EventConsumer, MemoryDeduplicator
from cloud_engine.bus.naming import parse_type, topic_for
from cloud_engine.engine.commands.base import Command, CommandContext
from cloud_engine.engine.commands.operations import AdvanceOperation, FailOperation
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.operation import FINISHED, Operation
from cloud_engine.engine.operations.registry import KINDS
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from cloud_engine.infra.tables import read_model
from cloud_engine.orchestration.candidate_source import CandidateSource
from cloud_engine.orchestration.placement import Placer

log = structlog.get_logger("orchestration.manager")

PLACE = "place"
ENGINE = "engine"  # the actor of the commands the manager sends
_KNOWN_MAX = 100_000


def manager_config(bootstrap: str, prefix: str) -> ConsumerConfig:
    return ConsumerConfig(
        bootstrap=bootstrap,
        group_id=f"{prefix}.engine.operations",
        topics=[topic_for(prefix, t) for t in ("operation", "vm", "volume", "snapshot")],
        topic_prefix=prefix,
        max_records=200,
        concurrent_keys=True,  # drives of one operation are serialised by its lock
    )


class OperationManager:
    def __init__(
        self,
        service: CommandService,
        store: EventStore,
        target: DatabaseTarget,
        config: ConsumerConfig,
        *,
        sweep_interval_s: float = 5.0,
        step_deadline_s: float = 600.0,
    ) -> None:
        self.service = service
        self.store = store
        self.target = target
        self.config = config
        self.sweep_interval_s = sweep_interval_s
        self.step_deadline_s = step_deadline_s
        self.consumer: EventConsumer | None = None
        self._placer: Placer | None = None
        self._db: asyncpg.Pool | None = None
        # Ids seen to be (True) or not to be (False) operations.
        self._known: OrderedDict[UUID, bool] = OrderedDict()
        # Lookups in flight: events of one request (a VM's and its volume's
        # Created, handled at once) share one load.
        self._looking: dict[UUID, asyncio.Task[bool]] = {}
        # Weak: a lock lives while some drive holds or waits for it.
        self._locks: weakref.WeakValueDictionary[UUID, asyncio.Lock] = weakref.WeakValueDictionary()

    async def run(self, stop: asyncio.Event) -> None:
        t = self.target
        # Single reads only: the sweep, the planner's rows.
        self._db = await create_pool(t, max_size=4, single_reads=True)
        self._placer = Placer(self.service, self.store, CandidateSource(self._db, t.schema))
        self.consumer = EventConsumer(self.config, self.handle, MemoryDeduplicator())
        consumer_task = asyncio.create_task(self.consumer.run())
        sweeper = asyncio.create_task(self._sweep_every(stop))
        try:
            await asyncio.wait(
                [consumer_task, asyncio.create_task(stop.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if consumer_task.done():
                consumer_task.result()
        finally:
            self.consumer.stop()
            sweeper.cancel()
            await asyncio.gather(consumer_task, sweeper, return_exceptions=True)
            await self._db.close()

    # Triggers ------------------------------------------------------------------

    async def handle(self, event: CloudEvent, _: object) -> None:
        if event.actor == ENGINE:
            # The outcome of a step this engine (or another) just took: that
            # step did everything the state called for, and what comes next
            # waits for an effector's result or a client (the sweep is the
            # backstop).
            return
        op_id = await self._operation_of(event)
        if op_id is not None:
            await self.drive(op_id, cause=event.id)

    async def _operation_of(self, event: CloudEvent) -> UUID | None:
        parsed = parse_type(event.type)
        if parsed is not None and parsed.aggregate == "operation":
            if parsed.name != "created":
                return None
            # Its results will name it as their correlation id: no load then.
            self._remember(event.aggregate_id, True)
            return event.aggregate_id
        try:
            candidate: UUID | None = UUID(event.correlation_id)
        except ValueError:
            candidate = None
        if candidate is not None:
            known = self._known.get(candidate)
            if known is None:
                known = await self._is_operation(candidate)
            if known:
                return candidate
        # Only effector results need the guard to find their operation: a
        # client's events come with the operation's own Created event.
        aggregate = None if parsed is None else parsed.aggregate
        if aggregate not in ("vm", "volume", "snapshot") or not event.actor.startswith("effector:"):
            return None
        held = await asyncio.to_thread(self.store.load, guard_id(event.aggregate_id))
        return held.operation_id if isinstance(held, ResourceGuard) else None

    def _remember(self, candidate: UUID, known: bool) -> None:
        self._known[candidate] = known
        if len(self._known) > _KNOWN_MAX:
            self._known.popitem(last=False)

    async def _is_operation(self, candidate: UUID) -> bool:
        looking = self._looking.get(candidate)
        if looking is None:

            async def look() -> bool:
                try:
                    found = await asyncio.to_thread(self.store.load, candidate)
                    known = isinstance(found, Operation)
                    self._remember(candidate, known)
                    return known
                finally:
                    del self._looking[candidate]

            looking = self._looking[candidate] = asyncio.create_task(look())
        # Shielded: one waiter cancelled must not cancel the others' load.
        return await asyncio.shield(looking)

    async def sweep(self) -> int:
        """Drive every unfinished operation once; returns how many."""
        assert self._db is not None
        try:
            rows = await self._db.fetch(
                f"SELECT id FROM {read_model(self.target.schema, 'operation')}"
                " WHERE NOT (state = ANY($1::text[])) ORDER BY created_on",
                list(FINISHED),
            )
        except asyncpg.UndefinedTableError:
            return 0
        for row in rows:
            await self.drive(row["id"], cause="sweep")
        return len(rows)

    async def _sweep_every(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                swept = await self.sweep()
                if swept:
                    log.info("operations_swept", count=swept)
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("sweep_failed", error=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sweep_interval_s)

    # Driving -------------------------------------------------------------------

    async def drive(self, op_id: UUID, *, cause: str = "") -> None:
        # One drive per operation at a time in this process; other engines
        # are kept apart by optimistic concurrency on the operation.
        lock = self._locks.get(op_id)
        if lock is None:
            lock = self._locks[op_id] = asyncio.Lock()
        async with lock:
            await self._drive(op_id, cause)

    async def _drive(self, op_id: UUID, cause: str) -> None:
        op = await asyncio.to_thread(self.store.load, op_id)
        if not isinstance(op, Operation) or op.finished:
            return
        context = CommandContext(actor=ENGINE, correlation_id=str(op.id), causation_id=cause)
        if self._overdue(op):
            reason = (
                f"step {op.current_step} of {op.kind} got no answer within"
                f" {self.step_deadline_s:g} s"
            )
            log.warning("operation_step_timed_out", operation_id=str(op.id), reason=reason)
            await self._send(
                FailOperation(
                    operation_id=op.id, reason=reason, timed_out=True, step=op.current_step
                ),
                context,
            )
        elif op.current_step == "place" and op.status in ("pending", "running"):
            await self._place(op, context)
        else:
            await self._send(AdvanceOperation(operation_id=op.id), context)

    def _overdue(self, op: Operation) -> bool:
        """A step that waits on the effectors for too long. Placing is the
        engine's own (never overdue)."""
        if op.status not in ("pending", "running") or op.current_step in (None, "place"):
            return False
        if op.kind in KINDS and not KINDS[op.kind].deadline:
            return False
        waited = (datetime.now(UTC) - op.waiting_since).total_seconds()
        return waited > self.step_deadline_s

    async def _send(self, command: Command, context: CommandContext) -> bool:
        try:
            await self.service.execute_async(command, context)
            return True
        except DomainError as e:
            log.warning(
                "operation_command_refused",
                command=type(command).__name__,
                correlation_id=context.correlation_id,
                reason=str(e),
            )
            return False

    async def _place(self, op: Operation, context: CommandContext) -> None:
        assert self._placer is not None
        reason = await self._placer.place(op, context)
        if reason is not None:
            # About the place step only: another engine instance may have
            # placed the operation meanwhile, and then this changes nothing.
            await self._send(FailOperation(operation_id=op.id, reason=reason, step=PLACE), context)
