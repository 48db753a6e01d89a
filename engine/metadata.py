"""Who, why and in which flow every event was recorded.

The command service binds an EventMeta for the duration of one command; the base
aggregate stamps it on every event it triggers, so no command method has to pass
it around (and none can forget it).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec


class EventMeta(msgspec.Struct, frozen=True, kw_only=True):
    actor: str = "system"
    request_id: str = ""
    correlation_id: str = ""
    causation_id: str = ""


SYSTEM = EventMeta()

_current: contextvars.ContextVar[EventMeta] = contextvars.ContextVar(
    "cloud_engine_event_meta", default=SYSTEM
)


def current_meta() -> EventMeta:
    return _current.get()


@contextmanager
def bound_meta(meta: EventMeta) -> Iterator[EventMeta]:
    token = _current.set(meta)
    try:
        yield meta
    finally:
        _current.reset(token)
