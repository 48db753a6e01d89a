"""Fixtures of the HTTP API tests: the API on a free loopback port over the
fresh schema of each test (pg_target), with an admin token (account "ops")
and user tokens for accounts "alice" and "bob"."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from api_harness import Api, start_api

from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from tests.integration.effectors.template_server import qemu_img, serve


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


@pytest.fixture
def template_url(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A small qcow2 served over loopback HTTP: (url, sha256)."""
    root = tmp_path / "www"
    root.mkdir()
    image = root / "tiny.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "4M")
    with serve(root) as served:
        yield f"{served.base_url}/tiny.qcow2", hashlib.sha256(image.read_bytes()).hexdigest()
