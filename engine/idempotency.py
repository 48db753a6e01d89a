"""Idempotency keys: the same key and command give the first result again.

Keys (scoped per actor) are stored with the command's hash and its result in
the same transaction as the command's events, so a key exists exactly when its
command's events do. Recently used keys are also kept in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import msgspec

from cloud_engine.engine.commands import CommandResult
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.store import CloudEngineRecorder, IdempotencyRecord
from cloud_engine.engine.submission import Submission

_result_decoder = msgspec.json.Decoder(CommandResult)
_encoder = msgspec.json.Encoder()

Key = tuple[str, str]


class IdempotencyKeys:
    def __init__(self, recorder: CloudEngineRecorder, *, remembered: int = 100_000) -> None:
        self._recorder = recorder
        self._remembered = remembered
        self._records: OrderedDict[Key, IdempotencyRecord] = OrderedDict()

    def record_for(self, submission: Submission, result: CommandResult) -> IdempotencyRecord:
        key = submission.key
        assert key is not None
        return IdempotencyRecord(key[0], key[1], submission.hash, _encoder.encode(result))

    def remember(self, record: IdempotencyRecord) -> None:
        self._records[(record.scope, record.key)] = record
        if len(self._records) > self._remembered:
            self._records.popitem(last=False)

    def load(self, keys: Sequence[Key]) -> None:
        """Fetch, in one query, the stored records of keys not in memory."""
        missing = [k for k in keys if k not in self._records]
        for record in self._recorder.select_idempotency(missing):
            self.remember(record)

    def answer(self, submission: Submission) -> bool:
        """Answer a submission whose key is already recorded; False if it is not."""
        key = submission.key
        record = None if key is None else self._records.get(key)
        if record is None:
            return False
        if record.command_hash != submission.hash:
            submission.future.set_exception(
                Conflict(
                    f"Idempotency-Key {submission.context.idempotency_key!r} was already used "
                    "with a different command",
                    field="Idempotency-Key",
                )
            )
        else:
            first = _result_decoder.decode(record.result)
            submission.future.set_result(msgspec.structs.replace(first, replayed=True))
        return True

    def settle(
        self, batch: list[Submission], requeue: Callable[[Submission], None]
    ) -> list[Submission]:
        """Answer what is already recorded; return what must still run.

        The same key twice in one batch runs once: later ones wait for the
        first and then get its result, or run on their own if it was refused.
        """
        keys = [s.key for s in batch if s.key is not None]
        if not keys:
            return batch
        self.load(keys)
        todo: list[Submission] = []
        leaders: dict[Key, Submission] = {}
        for s in batch:
            key = s.key
            if key is None:
                todo.append(s)
            elif self.answer(s):
                continue
            elif key in leaders:
                leaders[key].future.add_done_callback(_Follower(self, s, requeue))
            else:
                leaders[key] = s
                todo.append(s)
        return todo


class _Follower:
    def __init__(
        self, keys: IdempotencyKeys, follower: Submission, requeue: Callable[[Submission], None]
    ) -> None:
        self.keys = keys
        self.follower = follower
        self.requeue = requeue

    def __call__(self, _leader: object) -> None:
        if not self.keys.answer(self.follower):
            # The first one was refused, so nothing is recorded under the key.
            self.requeue(self.follower)
