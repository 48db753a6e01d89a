"""The command service: typed commands in, events stored, results out.

Every client (HTTP API, engine process managers, effector results) goes through
it. One writer thread per process executes commands against cached aggregates
and commits all the commands that arrived meanwhile in one transaction (group
commit), which is where the throughput over one-save-per-command comes from.

If a batch cannot commit (another process changed an aggregate it touched, or
an idempotency key was recorded meanwhile), nothing of it is stored and each of
its commands is run again on its own, reloading state, with bounded retries; so
one conflicting command never fails the others and never duplicates anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Literal
from uuid import UUID

import msgspec
import structlog
from eventsourcing.persistence import IntegrityError

from engine.aggregate import Aggregate
from engine.commands import Command, CommandContext, CommandResult, dispatch
from engine.commands.base import AggregateVersion, Outcome
from engine.errors import Conflict, DomainError
from engine.metadata import EventMeta, bound_meta
from engine.store import EventStore, IdempotencyRecord
from engine.working_set import AggregateCache, WorkingSet

log = structlog.get_logger("engine.service")

BATCH_ATTEMPTS = 3
BatchOutcome = Literal["committed", "conflict", "poisoned"]

_encoder = msgspec.json.Encoder()
_result_decoder = msgspec.json.Decoder(CommandResult)


class _Submission:
    __slots__ = ("command", "context", "future", "hash", "meta")

    def __init__(self, command: Command, context: CommandContext) -> None:
        self.command = command
        self.context = context
        self.future: Future[CommandResult] = Future()
        self.hash = b""
        if context.idempotency_key is not None:
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
        if self.context.idempotency_key is None:
            return None
        return (self.context.actor, self.context.idempotency_key)


class _Executed:
    __slots__ = ("collected", "outcome", "submission")

    def __init__(
        self,
        submission: _Submission,
        outcome: Outcome,
        collected: list[tuple[Aggregate, list[object]]],
    ) -> None:
        self.submission = submission
        self.outcome = outcome
        self.collected = collected


class CommandService:
    def __init__(
        self,
        store: EventStore,
        *,
        batch_max: int = 256,
        max_retries: int = 8,
        cache_size: int = 100_000,
    ) -> None:
        self.store = store
        self.batch_max = batch_max
        self.max_retries = max_retries
        self._cache = AggregateCache(cache_size)
        self._keys: OrderedDict[tuple[str, str], IdempotencyRecord] = OrderedDict()
        self._queue: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="command-writer", daemon=True)
        self._closed = False
        self.stats = {"batches": 0, "commands": 0, "conflicts": 0, "retries": 0}
        self._thread.start()

    # Public API -----------------------------------------------------------
    def submit(
        self, command: Command, context: CommandContext | None = None
    ) -> Future[CommandResult]:
        if self._closed:
            raise RuntimeError("command service is closed")
        submission = _Submission(command, context or CommandContext())
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
            try:
                self._process(batch)
            except BaseException as error:
                log.error("command batch failed", error=str(error), size=len(batch))
                for s in batch:
                    if not s.future.done():
                        s.future.set_exception(error)

    def _process(self, batch: list[_Submission]) -> None:
        todo = self._settle_idempotent(batch)
        if not todo:
            return
        self.stats["batches"] += 1
        self.stats["commands"] += len(todo)
        if len(todo) > 1:
            # A conflict usually means our cached copy of a hot aggregate was
            # stale; the touched aggregates were evicted, so one more try of the
            # whole batch on fresh state normally commits.
            for attempt in range(BATCH_ATTEMPTS):
                if attempt:
                    self.stats["conflicts"] += 1
                    time.sleep(random.uniform(0, 0.002 * attempt))
                outcome = self._run_batch(todo)
                if outcome == "committed":
                    return
                if outcome == "poisoned":
                    break
            log.info("batch did not commit, running its commands one by one", size=len(todo))
        for submission in todo:
            self._run_single(submission)

    # Idempotency ------------------------------------------------------------
    def _known_keys(self, keys: Sequence[tuple[str, str]]) -> None:
        missing = [k for k in keys if k not in self._keys]
        for record in self.store.recorder.select_idempotency(missing):
            self._remember(record)

    def _remember(self, record: IdempotencyRecord) -> None:
        self._keys[(record.scope, record.key)] = record
        if len(self._keys) > 100_000:
            self._keys.popitem(last=False)

    def _replay(self, submission: _Submission, record: IdempotencyRecord) -> None:
        if record.command_hash != submission.hash:
            submission.future.set_exception(
                Conflict(
                    f"Idempotency-Key {submission.context.idempotency_key!r} was already used "
                    "with a different command",
                    field="Idempotency-Key",
                )
            )
            return
        first = _result_decoder.decode(record.result)
        submission.future.set_result(msgspec.structs.replace(first, replayed=True))

    def _settle_idempotent(self, batch: list[_Submission]) -> list[_Submission]:
        keys = [s.key for s in batch if s.key is not None]
        if not keys:
            return batch
        self._known_keys(keys)
        todo: list[_Submission] = []
        leaders: dict[tuple[str, str], _Submission] = {}
        for s in batch:
            key = s.key
            if key is None:
                todo.append(s)
            elif key in self._keys:
                self._replay(s, self._keys[key])
            elif key in leaders:
                # Same key twice in one batch: the second waits for the first.
                leaders[key].future.add_done_callback(self._follower(s))
            else:
                leaders[key] = s
                todo.append(s)
        return todo

    def _follower(self, follower: _Submission) -> _FollowerCallback:
        return _FollowerCallback(self, follower)

    # Execution ----------------------------------------------------------------
    def _execute(self, submission: _Submission, ws: WorkingSet) -> _Executed:
        with bound_meta(submission.meta):
            outcome = dispatch(ws, submission.command)
        return _Executed(submission, outcome, ws.collect())

    def _run_batch(self, todo: list[_Submission]) -> BatchOutcome:
        ws = WorkingSet(self.store, self._cache, check_new=False)
        ws.prefetch(i for s in todo for i in referenced_ids(s.command))
        executed: list[_Executed] = []
        refused: list[tuple[_Submission, DomainError]] = []
        for s in todo:
            try:
                executed.append(self._execute(s, ws))
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
            self._commit(executed)
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

    def _run_single(self, submission: _Submission) -> None:
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
                if submission.key is not None:
                    self._known_keys([submission.key])
                    if submission.key in self._keys:
                        self._replay(submission, self._keys[submission.key])
                        return
            ws = WorkingSet(self.store, self._cache, check_new=attempt > 0)
            try:
                executed = self._execute(submission, ws)
                self._commit([executed])
            except IntegrityError:
                ws.evict_all()
                continue
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

    def _commit(self, executed: list[_Executed]) -> None:
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
                result = _result_of(item, positions[end - 1] if end > start and positions else None)
                results.append(result)
                key = item.submission.key
                if key is not None:
                    records.append(
                        IdempotencyRecord(
                            key[0], key[1], item.submission.hash, _encoder.encode(result)
                        )
                    )
            return records

        keyed = any(item.submission.key is not None for item in executed)
        positions = self.store.append(events, idempotency=build if keyed else None)  # type: ignore[arg-type]
        if not keyed:
            build(positions)
        for item, result in zip(executed, results, strict=True):
            key = item.submission.key
            if key is not None:
                self._remember(
                    IdempotencyRecord(key[0], key[1], item.submission.hash, _encoder.encode(result))
                )
            item.submission.future.set_result(result)


class _FollowerCallback:
    def __init__(self, service: CommandService, follower: _Submission) -> None:
        self.service = service
        self.follower = follower

    def __call__(self, leader: Future[CommandResult]) -> None:
        key = self.follower.key
        assert key is not None
        record = self.service._keys.get(key)
        if record is not None:
            self.service._replay(self.follower, record)
        else:
            # The first one was refused, so nothing is recorded under the key:
            # the follower runs on its own.
            self.service._queue.put(self.follower)


def referenced_ids(command: Command) -> Iterator[UUID]:
    """Every aggregate id a command names, for one prefetch per batch."""
    for name in command.__struct_fields__:
        value = getattr(command, name)
        if isinstance(value, UUID):
            yield value
        elif isinstance(value, tuple):
            yield from (v for v in value if isinstance(v, UUID))


def _result_of(item: _Executed, position: int | None) -> CommandResult:
    return CommandResult(
        command=type(item.submission.command).__name__,
        aggregate_id=item.outcome.aggregate_id,
        value=item.outcome.value,
        versions=tuple(
            AggregateVersion(a.id, type(a).__name__, a.version) for a, _events in item.collected
        ),
        position=position,
    )
