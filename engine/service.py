"""The command service: typed commands in, events stored, results out.

Every client (HTTP API, engine process managers, effector results) goes through
it. One writer thread per process executes commands against cached aggregates
and commits all the commands that arrived meanwhile in one transaction (group
commit), which is where the throughput over one-save-per-command comes from.

If a batch cannot commit (another process changed an aggregate it touched, or
an idempotency key was recorded meanwhile), nothing of it is stored; it is run
again on reloaded state, and if it still conflicts each of its commands runs on
its own with bounded, jittered retries. One conflicting command never fails the
others and nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Literal
from uuid import UUID

import msgspec
import structlog
from eventsourcing.persistence import IntegrityError

from cloud_engine.engine import aggregate_snapshots as snapshots
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.commands import Command, CommandContext, CommandResult, dispatch
from cloud_engine.engine.errors import Conflict, DomainError
from cloud_engine.engine.idempotency import IdempotencyKeys
from cloud_engine.engine.metadata import bound_meta
from cloud_engine.engine.store import EventStore, IdempotencyRecord
from cloud_engine.engine.submission import Executed, Submission, placed_ids, referenced_ids
from cloud_engine.engine.working_set import AggregateCache, WorkingSet

log = structlog.get_logger("engine.service")

EVENTS_PER_BATCH = 1000
BatchOutcome = Literal["committed", "conflict", "poisoned"]


class WriterBatch(msgspec.Struct, frozen=True):
    """What one batch of the writer took, for whoever watches it (the API's
    /metrics): an accept's latency is the wait plus the batch."""

    commands: int
    seconds: float  # from the batch's start to its last answer
    # Each command's time from submit() to the batch's start.
    waits: tuple[float, ...]
    conflicts: int  # whole-batch retries after a conflict


BatchObserver = Callable[[WriterBatch], None]


class CommandService:
    def __init__(
        self,
        store: EventStore,
        *,
        batch_max: int = 256,
        max_retries: int = 8,
        cache_size: int = 10_000,
        snapshot_every: int = snapshots.SNAPSHOT_EVERY,
    ) -> None:
        self.store = store
        # 0: no aggregate snapshots taken (loads still use stored ones).
        self.snapshot_every = snapshot_every
        self.batch_max = batch_max
        self.max_retries = max_retries
        self._cache = AggregateCache(cache_size)
        self._keys = IdempotencyKeys(store.recorder)
        # Commands a batch left for the next transaction (see EVENTS_PER_BATCH).
        self._later: list[Submission] = []
        self._queue: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="command-writer", daemon=True)
        self._closed = False
        self.stats = {"batches": 0, "commands": 0, "conflicts": 0, "retries": 0}
        self._observers: list[BatchObserver] = []
        self._thread.start()

    # Public API -----------------------------------------------------------
    def submit(
        self, command: Command, context: CommandContext | None = None
    ) -> Future[CommandResult]:
        if self._closed:
            raise RuntimeError("command service is closed")
        submission = Submission(command, context or CommandContext())
        self._queue.put(submission)
        return submission.future

    def execute(
        self, command: Command, context: CommandContext | None = None, timeout: float | None = None
    ) -> CommandResult:
        return self.submit(command, context).result(timeout)

    async def execute_async(
        self, command: Command, context: CommandContext | None = None
    ) -> CommandResult:
        return await asyncio.wrap_future(self.submit(command, context))

    def observe(self, observer: BatchObserver) -> Callable[[], None]:
        """Call observer (on the writer thread) after every batch; returns
        the call that stops it."""
        self._observers = [*self._observers, observer]

        def stop() -> None:
            self._observers = [o for o in self._observers if o is not observer]

        return stop

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    # Writer thread --------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._process_safely(batch)
        # Submissions that arrived with or after the stop (e.g. a follower
        # re-queued by its leader's callback) are still answered.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._process_safely([item])

    def _process_safely(self, batch: list[Submission]) -> None:
        started = time.perf_counter()
        conflicts = self.stats["conflicts"]
        try:
            self._process(batch)
        except BaseException as error:  # every caller must hear about it
            log.error("command batch failed", error=str(error), size=len(batch))
            for s in batch:
                if not s.future.done():
                    s.future.set_exception(error)
        observers = self._observers
        if observers:
            done = WriterBatch(
                commands=len(batch),
                seconds=time.perf_counter() - started,
                waits=tuple(started - s.submitted for s in batch),
                conflicts=self.stats["conflicts"] - conflicts,
            )
            for observer in observers:
                try:
                    observer(done)
                except Exception:  # a watcher's bug must not stop the writer
                    log.exception("writer_observer_failed")

    def _process(self, batch: list[Submission]) -> None:
        # A caller that gave up waiting (a cancelled execute_async) cancelled
        # its future: drop it before it runs. Once running, a future can no
        # longer be cancelled, so every command that commits is answered.
        batch = [s for s in batch if s.future.running() or s.future.set_running_or_notify_cancel()]
        todo = self._keys.settle(batch, self._queue.put)
        while todo:
            self._later = []
            self._process_group(todo)
            todo = self._later

    def _process_group(self, todo: list[Submission]) -> None:
        self.stats["batches"] += 1
        self.stats["commands"] += len(todo)
        if len(todo) > 1:
            # A conflict means another process changed an aggregate the batch
            # touched; those were evicted, so the batch runs again on fresh
            # state. Retrying whole batches with jittered, growing backoff lets
            # contending writers desynchronise; going one by one too early makes
            # a hot aggregate a commit-per-command race they keep losing.
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self.stats["conflicts"] += 1
                    time.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 7)))
                outcome = self._run_batch(todo)
                if outcome == "committed":
                    return
                if outcome == "poisoned":
                    break
            log.info("batch did not commit, running its commands one by one", size=len(todo))
        for submission in todo:
            self._run_single(submission)

    # Execution ----------------------------------------------------------------
    def _execute(self, submission: Submission, ws: WorkingSet) -> Executed:
        with bound_meta(submission.meta):
            outcome = dispatch(ws, submission.command)
        return Executed(submission, outcome, ws.collect())

    def _run_batch(self, todo: list[Submission]) -> BatchOutcome:
        ws = WorkingSet(self.store, self._cache, check_new=False)
        ws.prefetch(i for s in todo for i in referenced_ids(s.command))
        ws.prefetch(i for s in todo for i in placed_ids(s.command, ws))
        executed: list[Executed] = []
        refused: list[tuple[Submission, DomainError]] = []
        events = 0
        for index, s in enumerate(todo):
            if events >= EVENTS_PER_BATCH:
                # Keep transactions small (see store.MAX_EVENTS_PER_TRANSACTION):
                # the rest runs as the next batch, after this one commits.
                leftover = todo[index:]
                del todo[index:]
                self._later.extend(leftover)
                break
            try:
                executed.append(self._execute(s, ws))
                events += sum(len(e) for _a, e in executed[-1].collected)
            except DomainError as error:
                if ws.pending_count():
                    # Refused after emitting: only the one-by-one path can
                    # isolate it without losing the others' events.
                    ws.evict_all()
                    return "poisoned"
                refused.append((s, error))
            except Exception:
                ws.evict_all()
                return "poisoned"
        try:
            self._commit(executed, ws.reads())
        except IntegrityError:
            ws.evict_all()
            return "conflict"
        except BaseException:
            ws.evict_all()
            raise
        ws.commit_to_cache()
        for s, refusal in refused:
            s.future.set_exception(refusal)
        return "committed"

    def _run_single(self, submission: Submission) -> None:
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
                if submission.key is not None:
                    self._keys.load([submission.key])
                    if self._keys.answer(submission):
                        return
            ws = WorkingSet(self.store, self._cache, check_new=attempt > 0)
            try:
                # A placement's VM and volumes in one round trip, not one
                # load per lookup.
                ws.prefetch(placed_ids(submission.command, ws))
                executed = self._execute(submission, ws)
                self._commit([executed], ws.reads())
            except IntegrityError:
                ws.evict_all()
                continue
            except DomainError as error:
                ws.evict_all()
                # The refusal may rest on what another process changed since:
                # a cached copy, or fresh loads taken one by one while it
                # committed between them (a placement seen undone next to a
                # pool that already holds it). Only a refusal on current
                # reads is final.
                if not self.store.reads_current(ws.reads()):
                    continue
                submission.future.set_exception(error)
                return
            except BaseException as error:
                ws.evict_all()
                submission.future.set_exception(error)
                return
            ws.commit_to_cache()
            return
        submission.future.set_exception(
            Conflict(
                f"{type(submission.command).__name__} kept conflicting with concurrent changes; "
                f"gave up after {self.max_retries} retries"
            )
        )

    def _commit(self, executed: list[Executed], reads: Sequence[tuple[UUID, int]] = ()) -> None:
        events: list[object] = []
        bounds: list[tuple[int, int]] = []
        for item in executed:
            start = len(events)
            for _aggregate, aggregate_events in item.collected:
                events.extend(aggregate_events)
            bounds.append((start, len(events)))
        results: list[CommandResult] = []

        def build(positions: Sequence[int]) -> list[IdempotencyRecord]:
            results.clear()
            records: list[IdempotencyRecord] = []
            for item, (start, end) in zip(executed, bounds, strict=True):
                result = item.result(positions[end - 1] if end > start and positions else None)
                results.append(result)
                if item.submission.key is not None:
                    records.append(self._keys.record_for(item.submission, result))
            return records

        keyed = any(item.submission.key is not None for item in executed)
        # Aggregates whose new events crossed a multiple of the interval:
        # snapshotted with those events, in the same transaction.
        # Once per aggregate, at its latest version: two commands of one
        # batch may both take a host past a snapshot point, and one upsert
        # may not name a row twice (PostgreSQL refuses the whole batch).
        due: dict[UUID, Aggregate] = {}
        for item in executed:
            for aggregate, aggregate_events in item.collected:
                if not snapshots.due(aggregate.version, len(aggregate_events), self.snapshot_every):
                    continue
                known = due.get(aggregate.id)
                if known is None or aggregate.version > known.version:
                    due[aggregate.id] = aggregate
        snapshot = list(due.values())
        positions = self.store.append(
            events,  # type: ignore[arg-type]
            idempotency=build if keyed else None,
            reads=reads,
            snapshot=snapshot,
        )
        if not keyed:
            build(positions)
        for item, result in zip(executed, results, strict=True):
            if item.submission.key is not None:
                self._keys.remember(self._keys.record_for(item.submission, result))
            item.submission.future.set_result(result)
