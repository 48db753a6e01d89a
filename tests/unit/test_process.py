"""infra.process: the loop kind asked for, the start-up heap frozen, stop signals."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Iterator

import pytest
import uvloop

from cloud_engine.infra.process import Stopping, StopSignals, run_component, run_on
from cloud_engine.infra.settings import EventLoop


class Marker:
    """A tracked object made before the loop starts."""


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize(
    ("kind", "loop_type"),
    [("uvloop", uvloop.Loop), ("asyncio", asyncio.AbstractEventLoop)],
)
def test_the_coroutine_runs_on_the_loop_asked_for(kind: EventLoop, loop_type: type) -> None:
    async def which() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    loop = run_on(which(), kind)
    assert isinstance(loop, loop_type)
    if kind == "asyncio":
        assert not isinstance(loop, uvloop.Loop)


def test_objects_made_before_the_loop_are_left_out_of_later_collections() -> None:
    before = Marker()
    # gc.get_objects() lists what collections walk; frozen objects are not in it.
    assert any(o is before for o in gc.get_objects())

    async def inside() -> tuple[bool, bool, int]:
        during = Marker()
        tracked = gc.get_objects()
        return (
            any(o is before for o in tracked),
            any(o is during for o in tracked),
            gc.get_freeze_count(),
        )

    before_walked, during_walked, frozen = run_on(inside(), "uvloop")
    assert not before_walked
    assert during_walked
    assert frozen > 0


def test_a_stop_signal_is_noted_starting_acted_on_running_and_teardown_survives_more() -> None:
    """StopSignals: SIGTERM while starting raises Stopping only at a check;
    the running loop sees it at once; once the loop is done, a further
    SIGTERM is noted again, not the default that kills the process half-way
    through stopping the broker and PostgreSQL."""
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        signals.check()
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopping):
            signals.check()
        seen: list[bool] = []

        async def main(stop: asyncio.Event) -> None:
            await asyncio.wait_for(stop.wait(), 5)
            seen.append(True)

        run_component(main, "uvloop", signals)
        assert seen == [True]
        assert signal.getsignal(signal.SIGTERM) == signals._note
        os.kill(os.getpid(), signal.SIGTERM)  # still alive: noted
        assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_signal_while_running_sets_the_stop_event() -> None:
    with StopSignals() as signals:

        async def main(stop: asyncio.Event) -> None:
            asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
            await asyncio.wait_for(stop.wait(), 5)

        run_component(main, "asyncio", signals)
        assert signals.received == signal.SIGINT
