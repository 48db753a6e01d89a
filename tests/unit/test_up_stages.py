"""runner.up.run_in_stages with fake components: start in order once what a
stage needs is there, stop in reverse, each stage completely; a stuck
component is cut after the grace; a failing one stops the rest."""

from __future__ import annotations

import asyncio

import pytest

from cloud_engine.runner import up as up_module
from cloud_engine.runner.up import Stage, run_in_stages


class Part:
    def __init__(self, name: str, journal: list[str], *, stuck: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.stuck = stuck

    async def run(self, stop: asyncio.Event) -> None:
        self.journal.append(f"start {self.name}")
        await stop.wait()
        if self.stuck:  # as a consumer still joining its group
            await asyncio.sleep(60)
        await asyncio.sleep(0.01)
        self.journal.append(f"stop {self.name}")


class Failing:
    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("broken")


async def test_stages_start_in_order_once_needed_and_stop_in_reverse() -> None:
    journal: list[str] = []
    stop = asyncio.Event()
    caught_up = asyncio.Event()

    async def needs() -> None:
        journal.append("waiting")
        await caught_up.wait()
        journal.append("caught up")

    async def announce() -> None:
        journal.append("ready")
        stop.set()

    stages = [
        Stage({"relay": Part("relay", journal), "projections": Part("projections", journal)}),
        Stage({"engine": Part("engine", journal)}, needs=needs),
        Stage({"api": Part("api", journal)}),
    ]
    asyncio.get_running_loop().call_later(0.05, caught_up.set)
    failed = await run_in_stages(stop, stages, announce)
    assert failed == []
    assert journal[:9] == [
        "start relay",
        "start projections",
        "waiting",
        "caught up",
        "start engine",
        "start api",
        "ready",
        "stop api",
        "stop engine",
    ]
    assert sorted(journal[9:]) == ["stop projections", "stop relay"]


async def test_a_stop_while_waiting_for_a_stage_stops_what_started() -> None:
    journal: list[str] = []
    stop = asyncio.Event()

    async def never() -> None:
        await asyncio.Event().wait()

    async def announce() -> None:
        journal.append("ready")

    asyncio.get_running_loop().call_later(0.05, stop.set)
    stages = [Stage({"relay": Part("relay", journal)}), Stage({"x": Part("x", journal)}, never)]
    assert await run_in_stages(stop, stages, announce) == []
    assert journal == ["start relay", "stop relay"]


async def test_a_component_that_does_not_stop_is_cancelled_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(up_module, "STAGE_GRACE_S", 0.1)
    journal: list[str] = []
    stop = asyncio.Event()

    async def announce() -> None:
        stop.set()

    stages = [
        Stage({"relay": Part("relay", journal)}),
        Stage({"joining": Part("j", journal, stuck=True)}),
    ]
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await run_in_stages(stop, stages, announce) == []
    assert loop.time() - began < 5
    assert journal == ["start relay", "start j", "stop relay"]


async def test_a_failing_component_stops_the_others_and_is_named() -> None:
    journal: list[str] = []
    stop = asyncio.Event()

    async def announce() -> None:
        pass

    stages = [Stage({"relay": Part("relay", journal), "broken": Failing()})]
    assert await run_in_stages(stop, stages, announce) == ["broken"]
    assert journal == ["start relay", "stop relay"]
