"""bus.process.run_on: the loop kind asked for, and the start-up heap frozen."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from bus.process import run_on
from engine.settings import EventLoop


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
