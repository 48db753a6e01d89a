"""The log is tamper-evident: rows edited, deleted, inserted or reordered
through SQL are named by verify."""

from __future__ import annotations

import pytest
from psycopg.sql import SQL, Identifier

from cloud_engine.engine import integrity
from cloud_engine.engine.commands.fabric import CreateZone, DisableZone, EnableZone
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore

pytestmark = pytest.mark.postgres

TABLE = "cloudengine_events"


@pytest.fixture
def logged(service: CommandService, store: EventStore) -> list:
    zones = [service.execute(CreateZone(name=f"z{i}")).aggregate_id for i in range(5)]
    for zone in zones:
        service.execute(DisableZone(zone_id=zone))
        service.execute(EnableZone(zone_id=zone))
    return zones  # 15 events: positions 1-5 created, then disable/enable pairs


def run_sql(store: EventStore, statement: str, *args: object) -> None:
    query = SQL(statement).format(t=Identifier(store.target.schema, TABLE))
    with store.recorder.datastore.get_connection() as conn:
        conn.execute(query, args)


def verify(store: EventStore) -> integrity.Report:
    with store.recorder.datastore.get_connection() as conn:
        return integrity.verify(conn, store.target.schema, TABLE)


def positions(report: integrity.Report) -> list[int]:
    return sorted({f.position for f in report.findings})


def test_untouched_log_verifies(store, logged):
    report = verify(store)
    assert report.ok
    assert report.checked == 15


def test_edited_event_is_named(store, logged):
    run_sql(
        store,
        "UPDATE {t} SET state = convert_to(replace(convert_from(state, 'UTF8'),"
        " '\"z3\"', '\"evil\"'), 'UTF8') WHERE notification_id = 4",
    )
    report = verify(store)
    assert positions(report) == [4]
    assert "edited" in report.findings[0].problem


def test_deleted_event_is_named(store, logged):
    run_sql(store, "DELETE FROM {t} WHERE notification_id = 6")  # zone 0, version 2
    report = verify(store)
    # The chain breaks at the next event, which is also zone 0's version 3.
    assert positions(report) == [7]
    assert {f.problem.split(":")[0] for f in report.findings} == {
        "global chain broken before this event",
        "version 3 follows version 1",
    }


def test_reordered_events_are_named(store, logged):
    run_sql(store, "UPDATE {t} SET notification_id = -1 WHERE notification_id = 9")
    run_sql(store, "UPDATE {t} SET notification_id = 9 WHERE notification_id = 10")
    run_sql(store, "UPDATE {t} SET notification_id = 10 WHERE notification_id = -1")
    assert {9, 10} <= set(positions(verify(store)))


def test_inserted_event_is_named(store, service, logged):
    # A forged row slipped in with a position of its own choosing...
    run_sql(
        store,
        "INSERT INTO {t} (originator_id, originator_version, topic, state, notification_id)"
        " SELECT originator_id, 4, topic, state, 100 FROM {t} WHERE notification_id = 11",
    )
    # ...then a legitimate write.
    service.execute(DisableZone(zone_id=logged[0]))
    report = verify(store)
    assert {16, 100} <= set(positions(report))


def test_rows_written_around_the_trigger_are_named(store, logged):
    run_sql(store, "ALTER TABLE {t} DISABLE TRIGGER ALL")
    try:
        run_sql(
            store,
            "INSERT INTO {t} (originator_id, originator_version, topic, state)"
            " SELECT originator_id, 4, topic, state FROM {t} WHERE notification_id = 11",
        )
    finally:
        run_sql(store, "ALTER TABLE {t} ENABLE TRIGGER ALL")
    assert positions(verify(store)) == [16]


def test_a_kept_head_catches_a_consistent_rewrite(store, logged):
    with store.recorder.datastore.get_connection() as conn:
        kept = integrity.head(conn, store.target.schema, TABLE)
    assert kept is not None
    assert kept.position == 15
    assert integrity.Head.parse(str(kept)) == kept
    # Rewrite the last event and recompute its hashes as a careful tamperer would.
    run_sql(store, "ALTER TABLE {t} DISABLE TRIGGER ALL")
    try:
        run_sql(store, "DELETE FROM {t} WHERE notification_id = 15")
    finally:
        run_sql(store, "ALTER TABLE {t} ENABLE TRIGGER ALL")
    run_sql(
        store,
        "INSERT INTO {t} (originator_id, originator_version, topic, state, notification_id)"
        " SELECT (SELECT originator_id FROM {t} WHERE notification_id = 14), 3, topic,"
        " convert_to(replace(convert_from(state, 'UTF8'), 'system', 'mallory'), 'UTF8'), 15"
        " FROM {t} WHERE notification_id = 13",
    )
    # The trigger gave the forged row valid hashes: the chain alone is fine...
    assert verify(store).ok
    # ...but the kept head no longer matches.
    with store.recorder.datastore.get_connection() as conn:
        finding = integrity.check_head(conn, store.target.schema, TABLE, kept)
    assert finding is not None
    assert "rewritten" in finding.problem or "gone" in finding.problem


def test_head_text_is_validated():
    with pytest.raises(ValueError, match="position"):
        integrity.Head.parse("not-a-head")


def _cli(store: EventStore, *args: str):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_DATABASE_URL=store.target.url(),
        CLOUD_ENGINE_DATABASE_SCHEMA=store.target.schema,
        CLOUD_ENGINE_LOG_LEVEL="warning",
    )
    return subprocess.run(
        [sys.executable, "-m", "cloud_engine.runner.cli", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_verify_command_names_tampered_events(store, logged):
    head = _cli(store, "head")
    assert head.returncode == 0, head.stderr
    kept = head.stdout.strip()
    assert kept.startswith("15:")

    clean = _cli(store, "verify", "--head", kept)
    assert clean.returncode == 0, clean.stderr
    assert "checked 15 events: intact" in clean.stderr

    run_sql(store, "DELETE FROM {t} WHERE notification_id = 6")
    broken = _cli(store, "verify", "--json")
    assert broken.returncode == 1
    assert '"position":7' in broken.stdout
    assert "problem(s) found" in broken.stderr

    bad = _cli(store, "verify", "--head", "nonsense")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
