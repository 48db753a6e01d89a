"""The reconciler's loop: a round that finds no read models yet (the
projection worker has not made them: a first start) is logged as such,
without a traceback, and the loop goes on to the next round."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from cloud_engine.effectors.reconciler import Reconciler


class NoTables:
    """Read models whose tables do not exist yet; the second round ends the loop."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop, self.rounds = stop, 0

    async def hosts(self, zones: Any) -> list[Any]:
        self.rounds += 1
        if self.rounds == 2:
            self.stop.set()
        raise asyncpg.UndefinedTableError('relation "rm_host" does not exist')


async def nothing(_result: Any) -> None:
    pytest.fail("nothing is published without read models")


def test_a_round_before_the_read_models_exist_is_no_failure() -> None:
    async def main() -> NoTables:
        stop = asyncio.Event()
        models = NoTables(stop)
        reconciler = Reconciler(
            models,  # type: ignore[arg-type]
            nothing,
            zones=None,
            effector="effector@test",
            hypervisor_for=lambda uri: pytest.fail(f"no host is asked: {uri}"),
            interval_s=0.01,
        )
        await asyncio.wait_for(reconciler.run(stop), 10)
        return models

    with capture_logs() as logs:
        models = asyncio.run(main())
    assert models.rounds == 2  # the loop went on after the first
    events = [e["event"] for e in logs]
    assert events.count("read_models_not_ready") == 2
    assert "reconcile_failed" not in events
