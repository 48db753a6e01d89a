"""History, time travel and the audit export on a real PostgreSQL, and the
`cloud-engine history`, `state` and `audit export` commands as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from eventsourcing.persistence import StoredEvent

from cloud_engine.engine.commands import CommandContext
from cloud_engine.engine.commands.fabric import CreateCluster, CreatePod, CreateZone
from cloud_engine.engine.commands.hosts import (
    DisableHost,
    EnableHost,
    RegisterHost,
    ReleaseHostCapacity,
    ReserveHostCapacity,
)
from cloud_engine.engine.errors import NotFound, Validation
from cloud_engine.engine.fabric.host import Host, Reservation
from cloud_engine.projections.history import (
    HistoryEntry,
    entries_between,
    export,
    history,
    state_at,
    state_view,
    summarise,
)

pytestmark = pytest.mark.postgres

TICK = 0.005  # between commands, so every event has its own timestamp


def _ctx(n: int, actor: str = "alice") -> CommandContext:
    return CommandContext(
        actor=actor, request_id=f"req-{n}", correlation_id=f"corr-{n}", causation_id=f"cause-{n}"
    )


def _fabric(service):
    zone = service.execute(CreateZone(name="zone-1"), _ctx(0, "admin")).aggregate_id
    time.sleep(TICK)
    pod = service.execute(
        CreatePod(zone_id=zone, name="pod-1", gateway="10.0.0.1", cidr="10.0.0.0/24")
    ).aggregate_id
    time.sleep(TICK)
    cluster = service.execute(
        CreateCluster(zone_id=zone, pod_id=pod, name="cluster-1")
    ).aggregate_id
    time.sleep(TICK)
    return zone, pod, cluster


def _host_with_history(service):
    """A host through five commands, each with its own context; returns
    (host id, vm id, (zone, pod, cluster) ids)."""
    zone, pod, cluster = _fabric(service)
    vm = uuid.uuid4()
    host = service.execute(
        RegisterHost(
            zone_id=zone,
            pod_id=pod,
            cluster_id=cluster,
            name="host-1",
            cpu_cores=16,
            ram_mb=65536,
            libvirt_uri="qemu+tcp://10.0.0.11/system",
        ),
        _ctx(1),
    ).aggregate_id
    for n, command in enumerate(
        [
            DisableHost(host_id=host),
            EnableHost(host_id=host),
            ReserveHostCapacity(host_id=host, vm_id=vm, cpus=2, ram_mb=2048),
            ReleaseHostCapacity(host_id=host, vm_id=vm),
        ],
        start=2,
    ):
        time.sleep(TICK)
        service.execute(command, _ctx(n, actor="bob" if n % 2 else "alice"))
    return host, vm, (zone, pod, cluster)


# history -------------------------------------------------------------------


def test_history_shows_every_event_in_order_with_who_and_why(service, store):
    host, vm, _ = _host_with_history(service)
    entries = history(store, host)

    assert [e.version for e in entries] == [1, 2, 3, 4, 5]
    assert [e.event for e in entries] == [
        "created",
        "disabled",
        "enabled",
        "capacity_reserved",
        "capacity_released",
    ]
    assert {e.aggregate_type for e in entries} == {"host"}
    assert {e.aggregate_id for e in entries} == {host}
    assert entries[3].type == "io.cloudengine.host.capacity_reserved.v1"
    assert [e.actor for e in entries] == ["alice", "alice", "bob", "alice", "bob"]
    assert [e.request_id for e in entries] == [f"req-{n}" for n in range(1, 6)]
    assert [e.correlation_id for e in entries] == [f"corr-{n}" for n in range(1, 6)]
    assert [e.causation_id for e in entries] == [f"cause-{n}" for n in range(1, 6)]
    positions = [e.position for e in entries]
    assert positions == sorted(positions) and positions[-1] == store.max_position()
    times = [e.time for e in entries]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert times == sorted(times)

    assert [e.summary for e in entries] == [
        "created: name=host-1, cpu_cores=16, ram_mb=65536, libvirt_uri=qemu+tcp://10.0.0.11/system",
        "disabled",
        "enabled",
        f"capacity reserved: vm_id={vm}, cpus=2, ram_mb=2048",
        f"capacity released: vm_id={vm}",
    ]
    # data is the published data, as consumers get it on the bus.
    reserved = json.loads(bytes(entries[3].data))
    assert reserved["vm_id"] == str(vm)
    assert (reserved["cpus"], reserved["ram_mb"]) == (2, 2048)
    assert reserved["meta"]["request_id"] == "req-4"
    assert "originator_topic" not in json.loads(bytes(entries[0].data))


def test_a_stored_v1_event_shows_in_its_current_version(store):
    zone = uuid.uuid4()
    v1_state = (
        b'{"timestamp":"2025-03-01T10:00:00Z","originator_topic":"engine.fabric.zone:Zone",'
        b'"meta":{"actor":"legacy-import","request_id":"r-0","correlation_id":"","causation_id":""},'
        b'"name":"old-zone","description":"from v1"}'
    )
    store.recorder.insert_events(
        [StoredEvent(zone, 1, "engine.fabric.zone:Zone.Created", v1_state)]
    )
    (created,) = history(store, zone)
    assert created.type == "io.cloudengine.zone.created.v2"
    assert created.time == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert (created.actor, created.request_id) == ("legacy-import", "r-0")
    assert created.summary == "created: name=old-zone"
    assert json.loads(bytes(created.data))["network_type"] == "Advanced"
    assert state_at(store, zone, at=datetime(2025, 3, 1, 10)).name == "old-zone"
    window = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC)
    assert list(entries_between(store, *window)) == [created]


def test_history_of_an_unknown_aggregate_is_not_found(store):
    with pytest.raises(NotFound, match="not found"):
        history(store, uuid.uuid4())


def test_summaries_are_generic_and_short():
    assert summarise("vm", "failed", {"reason": "qemu crashed"}) == 'failed: reason="qemu crashed"'
    assert summarise("vm", "stop_requested", {"forced": True}) == "stop requested: forced=true"
    assert summarise("host", "overcommit_updated", {"cpu_overcommit": 2.0}) == (
        "overcommit updated: cpu_overcommit=2"
    )
    assert summarise("pod", "created", {"name": "p", "cidr": "10.0.0.0/24"}) == "created: name=p"
    assert summarise("x", "tagged", {"tags": ("a", "b"), "note": None}) == "tagged: tags=[a,b]"
    assert summarise("x", "noted", {"text": "y" * 500}) == "noted: text=" + "y" * 77 + "..."


# state_at / state_view -----------------------------------------------------


def test_state_at_a_version(service, store):
    host, vm, _ = _host_with_history(service)

    first = state_at(store, host, version=1)
    assert isinstance(first, Host)
    assert (first.version, first.state, dict(first.reservations)) == (1, "Enabled", {})
    assert state_at(store, host, version=2).state == "Disabled"
    reserved = state_at(store, host, version=4)
    assert dict(reserved.reservations) == {vm: Reservation(cpus=2, ram_mb=2048)}
    latest = state_at(store, host, version=5)
    assert latest.version == 5 and dict(latest.reservations) == {}

    with pytest.raises(Validation, match="has 5 versions"):
        state_at(store, host, version=6)
    with pytest.raises(Validation):
        state_at(store, host, version=0)
    with pytest.raises(NotFound, match="not found"):
        state_at(store, uuid.uuid4(), version=1)


def test_state_at_a_time(service, store):
    host, vm, _ = _host_with_history(service)
    entries = history(store, host)
    tiny = timedelta(microseconds=1)

    # Exactly at an event's time includes it; just before excludes it.
    assert state_at(store, host, at=entries[1].time).state == "Disabled"
    assert state_at(store, host, at=entries[1].time - tiny).state == "Enabled"
    assert state_at(store, host, at=entries[1].time - tiny).version == 1
    during = state_at(store, host, at=entries[3].time)
    assert during.version == 4 and vm in during.reservations
    after = state_at(store, host, at=entries[3].time + (entries[4].time - entries[3].time) / 2)
    assert after.version == 4
    assert state_at(store, host, at=datetime.now(UTC) + timedelta(days=1)).version == 5
    # A naive time is UTC.
    naive = entries[2].time.replace(tzinfo=None)
    assert state_at(store, host, at=naive).version == 3

    with pytest.raises(NotFound, match="created later"):
        state_at(store, host, at=entries[0].time - tiny)
    with pytest.raises(Validation):
        state_at(store, host)
    with pytest.raises(Validation):
        state_at(store, host, version=1, at=entries[0].time)


def test_state_view_is_the_public_state_as_json(service, store):
    host, vm, _ = _host_with_history(service)
    view = state_view(state_at(store, host, version=4))
    doc = json.loads(msgspec.json.encode(view))
    assert (doc["id"], doc["type"], doc["version"]) == (str(host), "host", 4)
    assert doc["created_on"].endswith("Z") and doc["modified_on"] >= doc["created_on"]
    attributes = doc["attributes"]
    assert attributes["name"] == "host-1"
    assert attributes["state"] == "Enabled"
    # Private attributes stay out; the properties that expose them come in.
    assert not any(name.startswith("_") for name in attributes)
    assert attributes["reservations"] == {str(vm): {"cpus": 2, "ram_mb": 2048}}
    assert attributes["cpus_used"] == 2 and attributes["ram_free_mb"] == 65536 - 2048


# export --------------------------------------------------------------------


def test_export_has_exactly_the_events_of_the_window_across_aggregates(service, store):
    host, _, fabric = _host_with_history(service)
    everything = sorted(
        [entry for aggregate in (*fabric, host) for entry in history(store, aggregate)],
        key=lambda e: e.position,
    )
    assert len(everything) == store.max_position() == 8
    start, end = everything[2].time, everything[6].time
    expected = [e for e in everything if start <= e.time < end]
    assert len(expected) == 4  # [start, end): the start is in, the end is not

    for page_size in (1, 2, 1000):
        got = list(entries_between(store, start, end, page_size=page_size))
        assert got == expected

    lines = b"".join(export(store, start, end, page_size=3)).splitlines()
    decoded = [json.loads(line) for line in lines]
    assert [(d["aggregate_id"], d["version"]) for d in decoded] == [
        (str(e.aggregate_id), e.version) for e in expected
    ]
    assert {d["aggregate_type"] for d in decoded} == {"cluster", "host"}
    assert [msgspec.json.decode(line, type=HistoryEntry) for line in lines] == expected

    later = datetime.now(UTC) + timedelta(hours=1)
    assert list(export(store, later, later + timedelta(hours=1))) == []
    with pytest.raises(Validation):
        export(store, end, start)


# CLI -----------------------------------------------------------------------


def _cli(pg_target, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_DATABASE_URL=pg_target.url(),
        CLOUD_ENGINE_DATABASE_SCHEMA=pg_target.schema,
        CLOUD_ENGINE_DATA_DIR=str(tmp_path),
        CLOUD_ENGINE_LOG_FORMAT="console",
    )
    return subprocess.run(
        [sys.executable, "-m", "cloud_engine.runner.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_history_state_and_export(service, store, pg_target, tmp_path):
    host, vm, _ = _host_with_history(service)
    entries = history(store, host)

    shown = _cli(pg_target, tmp_path, "history", str(host), "--json")
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [line["version"] for line in lines] == [1, 2, 3, 4, 5]
    assert [line["request_id"] for line in lines] == [f"req-{n}" for n in range(1, 6)]
    assert lines[3]["summary"] == f"capacity reserved: vm_id={vm}, cpus=2, ram_mb=2048"

    table = _cli(pg_target, tmp_path, "history", str(host))
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0] == f"host {host}"
    assert rows[1].startswith("VERSION  TIME") and rows[1].endswith("CORRELATION ID  SUMMARY")
    assert rows[5].split()[:5] == ["4", rows[5].split()[1], "alice", "req-4", "corr-4"]
    assert rows[5].endswith("ram_mb=2048")

    first = _cli(pg_target, tmp_path, "state", str(host), "--at", "1")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert (doc["version"], doc["attributes"]["state"]) == (1, "Enabled")
    assert first.stdout.startswith("{\n  ")  # indented

    moment = entries[1].time.replace(tzinfo=None).isoformat()  # naive: UTC
    disabled = _cli(pg_target, tmp_path, "state", str(host), "--at", moment)
    assert disabled.returncode == 0, disabled.stderr
    assert json.loads(disabled.stdout)["attributes"]["state"] == "Disabled"

    start, end = entries[1].time.isoformat(), entries[4].time.isoformat()
    dumped = _cli(pg_target, tmp_path, "audit", "export", "--from", start, "--to", end)
    assert dumped.returncode == 0, dumped.stderr
    assert [json.loads(line)["version"] for line in dumped.stdout.splitlines()] == [2, 3, 4]

    output = tmp_path / "audit.jsonl"
    to_file = _cli(
        pg_target,
        tmp_path,
        "audit",
        "export",
        "--from",
        start,
        "--to",
        end,
        "--output",
        str(output),
    )
    assert to_file.returncode == 0, to_file.stderr
    assert to_file.stdout == ""
    assert output.read_text() == dumped.stdout
    assert "exported 3 events" in to_file.stderr
    assert not (tmp_path / "audit.jsonl.partial").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["history", "not-a-uuid"],
        ["state", "not-a-uuid", "--at", "1"],
        ["state", str(uuid.UUID(int=1)), "--at", "yesterday"],
        ["state", str(uuid.UUID(int=1))],
        ["state", str(uuid.UUID(int=1)), "--at", "0"],
        ["audit", "export", "--from", "2025-13-01", "--to", "2026-01-01"],
        ["audit", "export", "--from", "2026-01-01", "--to", "2025-01-01"],
        ["audit", "export", "--from", "2025-01-01"],
    ],
    ids=[
        "history-bad-id",
        "state-bad-id",
        "state-bad-time",
        "state-no-at",
        "state-version-0",
        "export-bad-time",
        "export-empty-window",
        "export-no-end",
    ],
)
def test_cli_bad_input_is_a_clear_error(pg_target, tmp_path, args):
    result = _cli(pg_target, tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "cloud-engine" in result.stderr
    assert result.stdout == ""


def test_cli_unknown_aggregate_is_not_found(service, pg_target, tmp_path):
    service.execute(CreateZone(name="zone-1"))
    missing = str(uuid.uuid4())
    for args in (["history", missing], ["state", missing, "--at", "1"]):
        result = _cli(pg_target, tmp_path, *args)
        assert result.returncode == 1, result.stderr
        assert "not found" in result.stderr
        assert "Traceback" not in result.stderr
