"""Fixtures of the HTTP API tests: the API on a free loopback port over the
fresh schema of each test (pg_target), with an admin token (account "ops")
and user tokens for accounts "alice" and "bob"."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from api_harness import Api, start_api

from engine.database import DatabaseTarget
from engine.service import CommandService
from engine.store import EventStore


@pytest.fixture
async def api(
    pg_target: DatabaseTarget, store: EventStore, service: CommandService
) -> AsyncIterator[Api]:
    running, stop, task = await start_api(pg_target, service, store)
    try:
        yield running
    finally:
        stop.set()
        await task
