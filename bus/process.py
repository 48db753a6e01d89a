"""Run an asyncio component until SIGTERM or SIGINT, then stop it cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Literal

EventLoop = Literal["uvloop", "asyncio"]


def run_component(main: Callable[[asyncio.Event], Awaitable[None]], loop: EventLoop) -> None:
    """The process's one event loop: uvloop by default because every
    component is CPU-bound on its loop (asyncpg, aiokafka, msgspec callbacks)
    and uvloop's loop costs less per callback; asyncio's own stays selectable
    (CLOUD_ENGINE_EVENT_LOOP=asyncio) to rule the loop out when diagnosing."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_until_signalled(main))
    else:
        asyncio.run(run_until_signalled(main))


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
