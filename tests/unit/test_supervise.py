"""runner.supervise: a component that fails or ends on its own is replaced
by a new one after a backoff, counted and logged; one asked to stop is not."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cloud_engine.runner import supervise
from cloud_engine.runner.supervise import Backoff, Restarts, Supervised


class Flaky:
    """Fails on its first `failures` runs (raising, or returning early),
    then runs until stopped."""

    made: list[Flaky] = []

    def __init__(self, failures: int) -> None:
        self.index = len(Flaky.made)
        self.failures = failures
        self.ran = False
        Flaky.made.append(self)

    async def run(self, stop: asyncio.Event) -> None:
        self.ran = True
        if self.index < self.failures:
            if self.index % 2 == 0:
                raise ConnectionError("database went away")
            return  # ended on its own
        await stop.wait()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "BACKOFF_S", (0.0, 0.01))
    Flaky.made = []


def test_a_failing_component_is_replaced_until_one_runs_and_restarts_are_counted() -> None:
    restarts = Restarts()
    slot = Supervised("relay", lambda: Flaky(failures=3), restarts)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(slot.run(stop))
        while len(Flaky.made) < 4:
            await asyncio.sleep(0.005)
        assert not task.done()
        stop.set()
        await task

    asyncio.run(scenario())
    # Three ended (two raised, one returned), each replaced by a new one.
    assert len(Flaky.made) == 4 and all(f.ran for f in Flaky.made)
    assert slot.current is Flaky.made[-1]
    assert restarts.count("relay") == 3
    registry = CollectorRegistry()
    registry.register(restarts)
    assert 'cloudengine_up_restarts_total{part="relay"} 3.0' in generate_latest(registry).decode()


def test_a_component_asked_to_stop_is_not_restarted_even_when_it_fails() -> None:
    restarts = Restarts()

    class FailsOnStop:
        async def run(self, stop: asyncio.Event) -> None:
            await stop.wait()
            raise ConnectionError("closing a dead connection")

    made = []

    def make() -> FailsOnStop:
        made.append(FailsOnStop())
        return made[-1]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Supervised("api", make, restarts).run(stop))
        await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(scenario())
    assert len(made) == 1 and restarts.count("api") == 0


def test_a_stop_during_the_backoff_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    restarts = Restarts()
    monkeypatch.setattr(supervise, "BACKOFF_S", (3600.0,))
    slot = Supervised("engine", lambda: Flaky(failures=1), restarts)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(slot.run(stop))
        while restarts.count("engine") == 0:
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert len(Flaky.made) == 1


def test_backoff_grows_with_failures_and_resets_after_a_healthy_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervise, "BACKOFF_S", (1.0, 2.0, 4.0))
    now = [100.0]
    monkeypatch.setattr(supervise.time, "monotonic", lambda: now[0])
    backoff = Backoff()
    assert [backoff.ended() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    backoff.starting()
    now[0] += supervise.HEALTHY_S
    assert backoff.ended() == 1.0
