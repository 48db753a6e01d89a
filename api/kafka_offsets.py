"""Which offsets of the commands topic may be committed while commands run
at once: per partition, up to the first record not answered yet.

The gateway does not wait for one poll's commands before fetching the
next (the engine's writer commits concurrent commands together), so
records finish out of order; committing past an unfinished one would lose
it on a crash. Records are added in offset order, as a partition delivers
them.
"""

from __future__ import annotations

from collections import OrderedDict

from aiokafka import TopicPartition


class Offsets:
    def __init__(self) -> None:
        self._open: dict[TopicPartition, OrderedDict[int, bool]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._open.setdefault(tp, OrderedDict())[offset] = False

    def done(self, tp: TopicPartition, offset: int) -> None:
        records = self._open.get(tp)
        if records is None or offset not in records:
            return
        records[offset] = True
        # The finished prefix moves the commit point.
        for first, finished in list(records.items()):
            if not finished:
                break
            del records[first]
            self._next[tp] = first + 1

    @property
    def pending(self) -> int:
        return sum(len(r) for r in self._open.values())

    def committable(self) -> dict[TopicPartition, int]:
        """Partitions whose commit point moved since the last call."""
        moved = {tp: n for tp, n in self._next.items() if self._committed.get(tp) != n}
        self._committed.update(moved)
        return moved
