"""The dev broker on durable storage (Tansu's S3 engine on bus.broker_store,
objects in PostgreSQL), its state directory, and `up` restarting on it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cloud_engine.bus.broker import BrokerError, BrokerState, DevBroker, broker_binary
from cloud_engine.bus.broker_retention import Policy
from cloud_engine.bus.topics import ensure_topics
from cloud_engine.infra.database import DatabaseTarget
from tests.integration.test_cli import Running, http, until

pytestmark = pytest.mark.postgres

TOPIC = "durable.events"
RECORDS = 300


async def _produce(bootstrap: str, count: int) -> None:
    await ensure_topics(bootstrap, [TOPIC], 3)
    # As the relay produces: acks from all replicas, no idempotence.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(TOPIC, key=f"k{n % 7}".encode(), value=f"v{n}".encode())
            for n in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, group: str | None, at_most: int) -> list[bytes]:
    """Up to at_most values; a group commits what it read."""
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < at_most and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=at_most - len(values))
            for records in batch.values():
                values += [r.value for r in records if r.value is not None]
            if not batch and values:
                break  # drained
        if group is not None:
            await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def _committed(bootstrap: str, group: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(TOPIC, p)) for p in range(3)}
    finally:
        await consumer.stop()


async def _ends(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets([TopicPartition(TOPIC, p) for p in range(3)]))
    finally:
        await consumer.stop()


def test_durable_broker_keeps_topics_records_and_committed_offsets(
    broker_database: DatabaseTarget, tmp_path: Path
) -> None:
    # Retention off: everything is read back from the start at the end,
    # however long the group joins take (test_dev_broker_retention.py).
    broker = DevBroker(
        log_file=tmp_path / "broker.log",
        database=broker_database,
        state_dir=tmp_path,
        retention=Policy(retention_s=0),
    )
    bootstrap = broker.start()
    try:
        asyncio.run(_produce(bootstrap, RECORDS))
        first = asyncio.run(_consume(bootstrap, "readers", 100))
        assert len(first) == 100
        committed = asyncio.run(_committed(bootstrap, "readers"))
        assert sum(v or 0 for v in committed.values()) > 0
        ends = asyncio.run(_ends(bootstrap))
        port = broker.port

        broker.restart()

        # Same address; the topic, its records and the group's offsets kept.
        assert broker.port == port
        assert asyncio.run(_ends(bootstrap)) == ends
        assert asyncio.run(_committed(bootstrap, "readers")) == committed
        # (Resuming the group itself is left out: Tansu holds a group's
        # rejoin for ~18 s, restart or not.)
        everything = asyncio.run(_consume(bootstrap, None, RECORDS + 1))
        assert sorted(everything) == sorted(f"v{n}".encode() for n in range(RECORDS))
        assert set(first) <= set(everything)
    finally:
        broker.stop()


def test_memory_broker_still_forgets(own_broker: DevBroker) -> None:
    """The broker-loss tests' broker: a restart comes back empty."""
    asyncio.run(_produce(own_broker.bootstrap, 10))
    own_broker.restart_empty()
    consumer_topics = asyncio.run(_topics(own_broker.bootstrap))
    assert TOPIC not in consumer_topics


async def _topics(bootstrap: str) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_stale_broker_is_stopped_and_anything_else_left_alone(tmp_path: Path) -> None:
    """What a starter killed before it could stop its broker leaves behind
    (here started by hand, so nothing else stops it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"tcp://127.0.0.1:{port}"
    stale = subprocess.Popen(
        [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # A recorded pid now used by something else must survive.
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = BrokerState(port=port, broker_pid=stale.pid, store_pid=bystander.pid)
        (tmp_path / "dev-broker.json").write_bytes(msgspec.json.encode(state))
        broker = DevBroker(log_file=tmp_path / "broker.log", state_dir=tmp_path)
        broker.start()
        try:
            assert stale.wait(10) is not None
            assert broker.port == port  # its port, free again, taken back
            assert bystander.poll() is None
        finally:
            broker.stop()
    finally:
        for process in (stale, bystander):
            if process.poll() is None:
                process.kill()
                process.wait()


STARTER = """
import sys, time
from pathlib import Path
from cloud_engine.bus.broker import DevBroker
from cloud_engine.infra.database import parse_database_url
broker = DevBroker(database=parse_database_url(sys.argv[1]), state_dir=Path(sys.argv[2]))
broker.start()
print("pids", broker._process.pid, broker._store.pid, flush=True)
time.sleep(120)
"""


def _starter(database: DatabaseTarget, state_dir: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """Another process running a durable broker on state_dir: it and the
    pids of its broker and store."""
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, database.url(), str(state_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert starter.stdout is not None
    # Its log lines come first.
    line = next(x for x in starter.stdout if x.startswith("pids "))
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    return starter, pids


def test_a_broker_another_live_process_runs_is_not_taken_over(
    broker_database: DatabaseTarget, tmp_path: Path
) -> None:
    starter, pids = _starter(broker_database, tmp_path)
    try:
        with pytest.raises(BrokerError, match="another `up`"):
            DevBroker(database=broker_database, state_dir=tmp_path).start()
        assert all(_alive(p) for p in pids)
    finally:
        starter.kill()
        starter.wait()
    until("the broker and its store to end", lambda: not any(_alive(p) for p in pids), 15)


def test_broker_and_store_end_with_a_starter_killed_outright(
    broker_database: DatabaseTarget, tmp_path: Path
) -> None:
    starter, pids = _starter(broker_database, tmp_path)
    try:
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        until("the broker and its store to end", lambda: not any(_alive(p) for p in pids), 15)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()


async def _relay_position(pgdata: Path) -> tuple[int, int]:
    """(the relay's saved position, the newest event's)."""
    conn = await asyncpg.connect(host=str(pgdata), user="postgres", database="cloudengine")
    try:
        saved = await conn.fetchval("SELECT position FROM cloudengine_relay WHERE name = 'relay'")
        newest = await conn.fetchval("SELECT max(notification_id) FROM cloudengine_events")
        return int(saved or 0), int(newest or 0)
    finally:
        await conn.close()


def _caught_up(pgdata: Path) -> bool:
    saved, newest = asyncio.run(_relay_position(pgdata))
    return saved == newest > 0


async def _zone_events(bootstrap: str) -> dict[str, float]:
    """Zone name -> when the broker appended its event (s since the epoch)."""
    consumer = AIOKafkaConsumer(
        "cloudengine.zone.events", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch and found:
                break
            for records in batch.values():
                for r in records:
                    name = json.loads(r.value or b"{}")["name"]
                    assert name not in found, f"{name} published twice"
                    found[name] = r.timestamp / 1000
    finally:
        await consumer.stop()
    return found


def test_up_restarted_keeps_the_broker_and_does_not_republish(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    first = Running(tmp_path)
    try:
        until("the relay to publish the demo", lambda: _caught_up(pgdata), 60)
        position, _ = asyncio.run(_relay_position(pgdata))
        bootstrap = first.bootstrap
    finally:
        code, logs = first.stop()
    assert code == 0, logs

    restarted = time.time()
    second = Running(tmp_path)
    try:
        assert second.bootstrap == bootstrap  # same port
        # A new event after the restart: once it is published the relay has
        # surely made its start-up check of the broker.
        assert asyncio.run(_relay_position(pgdata))[0] >= position
        api, token = second.value("API"), second.value("admin token")
        status, body = http("POST", f"{api}/v1/zones", token, {"name": "zone-after-restart"})
        assert status == 202, body
        until("the relay to publish the new zone", lambda: _caught_up(pgdata), 60)
        saved, _ = asyncio.run(_relay_position(pgdata))
        assert saved > position
        # Each zone once; the demo zone's record is the first run's (a
        # republished one would have been appended after the restart).
        zones = asyncio.run(_zone_events(second.bootstrap))
        assert set(zones) == {"demo-zone", "zone-after-restart"}, zones
        assert zones["demo-zone"] < restarted < zones["zone-after-restart"]
    finally:
        code, logs = second.stop()
    assert code == 0, logs
    assert "republishing" not in logs, logs
    assert os.path.exists(tmp_path / "dev-broker.json")
