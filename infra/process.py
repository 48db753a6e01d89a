"""Run an asyncio component until SIGTERM or SIGINT, then stop it cleanly."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from cloud_engine.infra.settings import EventLoop

T = TypeVar("T")


def run_on(main: Coroutine[Any, Any, T], loop: EventLoop) -> T:
    """Run a coroutine on a new event loop of the kind asked: uvloop by
    default because every component is CPU-bound on its loop (asyncpg,
    aiokafka, msgspec callbacks) and uvloop's loop costs less per callback;
    asyncio's own stays selectable (CLOUD_ENGINE_EVENT_LOOP=asyncio) to rule
    the loop out when diagnosing."""
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    settle_heap()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


# Generation thresholds. A full collection walks every tracked object and
# holds the loop meanwhile; with the start-up heap frozen, the objects left
# are mostly the aggregate cache, which churns with every command, so the
# default (a full collection after 10 of generation 1) paused the API
# server of bench/api.py 15 times in its two minutes, and once with 100.
# Most garbage goes by reference counting; only cycles wait for a full
# collection, and the caches they could come from are bounded.
GC_THRESHOLDS = (700, 10, 100)


def settle_heap() -> None:
    """What exists so far is mostly imported modules, alive as long as the
    process: frozen, it is left out of every later collection, whose pauses
    stop the loop (the odd frozen object that dies later is never freed)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_component(
    main: Callable[[asyncio.Event], Awaitable[None]],
    loop: EventLoop,
    signals: StopSignals | None = None,
) -> None:
    run_on(run_until_signalled(main, signals), loop)


class Stopping(Exception):
    """A stop signal arrived while the process was starting."""


class StopSignals:
    """SIGINT and SIGTERM as a request to stop cleanly, in every phase of a
    process that starts servers (with StopSignals() as signals: ...):

    - starting: the signal is noted and check() raises Stopping at the next
      step boundary, never inside a step (KeyboardInterrupt in the middle of
      starting PostgreSQL would leave it half-made and the process gone
      with a traceback; SIGTERM's default would kill the process at once);
    - running: run_until_signalled(main, signals) sets the stop event (at
      once for a signal noted while starting);
    - stopping: noted and nothing else, so the teardown (consumers, broker,
      PostgreSQL) always completes; only SIGKILL cuts it short.

    The previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *_: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _note(self, signum: int, _frame: object) -> None:
        # Only a note: a handler runs between any two bytecodes of the main
        # thread, where raising or logging (a held lock) is not safe.
        if self.received is None:
            self.received = signal.Signals(signum)

    def check(self) -> None:
        if self.received is not None:
            raise Stopping(self.received.name)


async def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]], signals: StopSignals | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping(sig: signal.Signals) -> None:
        if signals is not None and signals.received is None:
            signals.received = sig
        stop.set()

    # Restored afterwards: the loop would leave the defaults behind, and a
    # second SIGTERM while the caller tears down would kill it half-way.
    previous = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    for sig in StopSignals.SIGNALS:
        loop.add_signal_handler(sig, stopping, sig)
    if signals is not None and signals.received is not None:
        stop.set()
    try:
        await main(stop)
    finally:
        for sig in StopSignals.SIGNALS:
            loop.remove_signal_handler(sig)
            if previous[sig] is not None:  # None: set outside Python, left alone
                signal.signal(sig, previous[sig])
