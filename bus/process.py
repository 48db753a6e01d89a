"""Run an asyncio component until SIGTERM or SIGINT, then stop it cleanly."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from engine.settings import EventLoop

T = TypeVar("T")


def run_on(main: Coroutine[Any, Any, T], loop: EventLoop) -> T:
    """Run a coroutine on a new event loop of the kind asked: uvloop by
    default because every component is CPU-bound on its loop (asyncpg,
    aiokafka, msgspec callbacks) and uvloop's loop costs less per callback;
    asyncio's own stays selectable (CLOUD_ENGINE_EVENT_LOOP=asyncio) to rule
    the loop out when diagnosing."""
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    # What exists so far is mostly imported modules, alive as long as the
    # process: frozen, it is left out of every later collection, whose pauses
    # stop the loop (the odd frozen object that dies later is never freed).
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def run_component(main: Callable[[asyncio.Event], Awaitable[None]], loop: EventLoop) -> None:
    run_on(run_until_signalled(main), loop)


async def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await main(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
