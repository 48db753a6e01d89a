"""The eventsourcing library's own recorder test cases, run against the
event store's recorder (engine.store.CloudEngineRecorder).

CloudEngineRecorder overrides private methods of the library's PostgreSQL
application recorder: the insert without psycopg's pipeline mode, an
advisory lock where the library takes LOCK TABLE, NOTIFY sent with that
lock, the read checks, the idempotency rows. The library is pinned below
9.6 (pyproject.toml) because those methods are not its public interface;
these cases are what says whether an upgrade, or a change to the overrides,
broke the recorder's contract: positions contiguous and in commit order
(NonInterleavingNotificationIDsBaseCase races two writers of 1,000 events),
optimistic concurrency, notifications selected by position and topic, and
subscriptions woken by the NOTIFY.

Each case gets a fresh schema of the tests' PostgreSQL (pg_target) with the
events table as EventStore makes it: the recorder's tables and the
integrity trigger (engine/integrity.py). No case is skipped.

The library's AggregateRecorderTestCase is not run: it is the contract of
an aggregate recorder (insert_events returns None), which this one is not;
the library runs it only against PostgresAggregateRecorder.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
)

from cloud_engine.engine import integrity
from cloud_engine.engine.store import CloudEngineRecorder
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.tables import EVENTS_TABLE

pytestmark = pytest.mark.postgres


class OnTestDatabase:
    """create_recorder() for the library's cases: a CloudEngineRecorder on
    this test's schema, its tables and trigger created."""

    # The library's concurrency cases run 10 writers and 2 readers at once.
    pool_size = 12

    @pytest.fixture(autouse=True)
    def _schema(self, pg_target: DatabaseTarget) -> Iterator[None]:
        self.target = pg_target
        self.datastores: list[PostgresDatastore] = []
        yield
        for datastore in self.datastores:
            datastore.close()

    def create_recorder(self) -> CloudEngineRecorder:
        target = self.target
        datastore = PostgresDatastore(
            target.dbname,
            target.host,
            target.port,
            target.user,
            target.password,
            schema=target.schema,
            pool_size=self.pool_size,
        )
        self.datastores.append(datastore)
        recorder = CloudEngineRecorder(datastore, events_table_name=EVENTS_TABLE)
        recorder.create_table()
        with datastore.get_connection() as conn:
            integrity.install(conn, target.schema, EVENTS_TABLE)
        return recorder


class TestApplicationRecorder(OnTestDatabase, ApplicationRecorderTestCase[CloudEngineRecorder]):
    def test_insert_subscribe(self) -> None:
        # Optional in the library (a recorder may not offer subscriptions);
        # the library runs it against its own PostgreSQL recorder.
        self.optional_test_insert_subscribe()


class TestNonInterleavingPositions(OnTestDatabase, NonInterleavingNotificationIDsBaseCase):
    pass
