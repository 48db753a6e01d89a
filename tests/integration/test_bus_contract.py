"""The bus contract end to end: real PostgreSQL, the real relay, a real broker.

Events are stored through the command service, published by bus.relay.Relay to
the dev broker (Tansu, shared by the session; each test has its own topic
prefix) and read back:

1. by an integrator's consumer that knows nothing of this code base (aiokafka,
   json, jsonschema and the files in schemas/ only), which checks every record
   against the published schema and the CloudEvents binding;
2. by bus.consumer.EventConsumer, whose handler fails on one event: that event
   goes to the group's dead-letter topic and its partition moves on;
3. by tests/integration/consumer_main.py as a separate process, stopped with
   SIGTERM and started again: it commits on the way out and resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import signal
import subprocess
import sys
import typing
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from jsonschema import Draft202012Validator

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig, EventConsumer
from cloud_engine.bus.dedupe_pg import PostgresDeduplicator
from cloud_engine.bus.naming import all_event_types, topic_for
from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.engine.commands import HANDLERS
from cloud_engine.engine.commands.fabric import CreateZone, DisableZone, EnableZone
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool
from tests import scenarios

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
EVENT_SCHEMAS = ROOT / "schemas" / "events"
CONSUMER_MAIN = Path(__file__).with_name("consumer_main.py")


# Helpers ----------------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float,
    what: str | Callable[[], str],
) -> object:
    """Poll predicate (sync or async) until it is truthy; fail saying what never
    happened (what may be a callable, to describe the state at the time out)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {described}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_relay(
    target: DatabaseTarget, bootstrap: str, prefix: str
) -> AsyncIterator[tuple[Relay, asyncio.Task[None]]]:
    relay = Relay(target, RelayConfig(bootstrap, topic_prefix=prefix, partitions=4))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def relayed(relay: Relay, task: asyncio.Task[None], store: EventStore) -> int:
    """Wait until the relay has published (and saved its position at) every stored event."""
    position = store.max_position()

    def caught_up() -> bool:
        if task.done():
            raise AssertionError(f"the relay stopped early: {task.exception()!r}")
        return relay.stats.position == position

    await wait_until(
        caught_up,
        15,
        lambda: f"the relay to publish up to position {position} (stats: {relay.stats})",
    )
    return position


def zone_history(service: CommandService, zones: int, name: str) -> list[str]:
    """Zones created, disabled, enabled and disabled again: versions 1 to 4 each.
    Returns the ce_id ("<zone id>:<version>") of every event stored."""
    ids = []
    for i in range(zones):
        zone = service.execute(CreateZone(name=f"{name}-{i}")).aggregate_id
        service.execute(DisableZone(zone_id=zone))
        service.execute(EnableZone(zone_id=zone))
        service.execute(DisableZone(zone_id=zone))
        ids += [f"{zone}:{version}" for version in range(1, 5)]
    return ids


def in_order_per_aggregate(ce_ids: list[str]) -> bool:
    versions: dict[str, list[int]] = defaultdict(list)
    for ce_id in ce_ids:
        subject, _, version = ce_id.rpartition(":")
        versions[subject].append(int(version))
    return all(v == sorted(v) for v in versions.values())


# 1. A consumer that knows only aiokafka, json, jsonschema and schemas/ ---------------------------
#
# Nothing in this section may import from bus/ or engine/: it is what an
# integrator writes from docs/events.md and the files in schemas/.


class Received(typing.NamedTuple):
    count: int
    types: Counter[str]
    positions: list[int]
    problems: list[str]


async def read_and_validate_every_event(
    bootstrap: str, prefix: str, expected: int, schemas_dir: Path, timeout: float
) -> Received:
    validators: dict[str, Draft202012Validator] = {}
    types: Counter[str] = Counter()
    positions: list[int] = []
    problems: list[str] = []
    count = 0

    def check(record: typing.Any) -> None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        names = [name for name, _ in record.headers]
        if len(names) != len(set(names)):
            problems.append(f"{where}: repeated headers {names}")
        h = {name: value.decode() for name, value in record.headers}
        key = record.key.decode() if record.key is not None else None
        if h.get("content-type") != "application/json":
            problems.append(f"{where}: content-type {h.get('content-type')!r}")
        if h.get("ce_specversion") != "1.0":
            problems.append(f"{where}: ce_specversion {h.get('ce_specversion')!r}")
        if h.get("ce_subject") != key:
            problems.append(f"{where}: ce_subject {h.get('ce_subject')!r} but key {key!r}")
        if h.get("ce_id") != f"{h.get('ce_subject')}:{h.get('ce_aggregateversion')}":
            problems.append(f"{where}: ce_id {h.get('ce_id')!r} is not <subject>:<version>")
        ce_type = h.get("ce_type", "")
        types[ce_type] += 1
        aggregate = ce_type.split(".")[2] if ce_type.count(".") >= 4 else "?"
        if record.topic != f"{prefix}.{aggregate}.events":
            problems.append(f"{where}: {ce_type!r} on topic {record.topic}")
        try:
            positions.append(int(h["ce_position"]))
        except (KeyError, ValueError):
            problems.append(f"{where}: ce_position {h.get('ce_position')!r}")
        validator = validators.get(ce_type)
        if validator is None:
            path = schemas_dir / f"{ce_type}.json"
            if not path.is_file():
                problems.append(f"{where}: no schema {path.name} for ce_type {ce_type!r}")
                return
            schema = json.loads(path.read_text())
            Draft202012Validator.check_schema(schema)
            validator = validators[ce_type] = Draft202012Validator(
                schema, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
        try:
            data = json.loads(record.value)
        except (TypeError, ValueError) as e:
            problems.append(f"{where}: value is not JSON: {e}")
            return
        if h.get("ce_dataschema") != validator.schema.get("$id"):
            problems.append(f"{where}: ce_dataschema {h.get('ce_dataschema')!r} is not the $id")
        errors = [e.message for e in validator.iter_errors(data)]
        if errors:
            problems.append(f"{where}: {ce_type} data breaks its schema: {errors[:3]}")

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"{prefix}-integrator",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    consumer.subscribe(pattern=rf"^{re.escape(prefix)}\.[a-z_]+\.events$")
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while count < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                for record in records:
                    count += 1
                    check(record)
        # Anything beyond what was expected (a duplicate, a stray event)?
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for record in records:
                count += 1
                check(record)
    finally:
        await consumer.stop()
    return Received(count, types, positions, problems)


async def test_consumer_knowing_only_aiokafka_and_json_schema_validates_every_event(
    service: CommandService,
    store: EventStore,
    pg_target: DatabaseTarget,
    broker: str,
    topic_prefix: str,
):
    commands = await asyncio.to_thread(scenarios.through_service, service)
    assert {type(c) for c in commands} == set(HANDLERS), "the scenario skips a command"
    async with running_relay(pg_target, broker, topic_prefix) as (relay, task):
        stored = await relayed(relay, task, store)

    received = await read_and_validate_every_event(
        broker, topic_prefix, stored, EVENT_SCHEMAS, timeout=15
    )

    assert received.problems == [], "\n".join(received.problems)
    assert received.count == stored, f"{stored} events stored, {received.count} records read"
    assert sorted(received.positions) == list(range(1, stored + 1)), "a position was missed"
    every_type = {t.ce_type for t in all_event_types()}
    assert len(every_type) == len(all_event_types())  # no two classes share a type
    assert {p.name.removesuffix(".json") for p in EVENT_SCHEMAS.glob("*.json")} == every_type
    missing = every_type - set(received.types)
    assert not missing, f"never published (extend tests/scenarios.py?): {sorted(missing)}"
    assert set(received.types) == every_type


# 2. A handler that keeps failing on one event --------------------------------------------------


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float) -> list[typing.Any]:
    """Every record of a topic, from the start, without a consumer group."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", metadata_max_age_ms=1000
    )
    await consumer.start()
    records: list[typing.Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(records) < expected and loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records += batch
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records += batch
    finally:
        await consumer.stop()
    return records


async def test_poison_event_goes_to_dead_letter_topic_and_partition_moves_on(
    service: CommandService,
    store: EventStore,
    pg_target: DatabaseTarget,
    broker: str,
    topic_prefix: str,
):
    stored_ids = await asyncio.to_thread(zone_history, service, 6, "zone")
    poison_zone = stored_ids[8].rpartition(":")[0]  # the third zone
    poison_id = f"{poison_zone}:2"
    assert poison_id in stored_ids
    async with running_relay(pg_target, broker, topic_prefix) as (relay, task):
        await relayed(relay, task, store)

    pool = await create_pool(pg_target, max_size=2)
    applied: list[CloudEvent] = []
    poison_attempts: list[CloudEvent] = []

    async def bill(event: CloudEvent, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT 1")  # inside the deduplicator's transaction
        if event.id == poison_id:
            poison_attempts.append(event)
            raise ValueError(f"cannot bill {event.id}: no price for this zone")
        applied.append(event)

    group = f"{topic_prefix}-billing"
    zone_topic = topic_for(topic_prefix, "zone")
    config = ConsumerConfig(
        bootstrap=broker,
        group_id=group,
        topics=[zone_topic],
        topic_prefix=topic_prefix,
        retry_backoff=0.05,
    )
    try:
        dedupe = PostgresDeduplicator(pool, consumer="billing", schema=pg_target.schema)
        await dedupe.setup()
        consumer = EventConsumer(config, bill, dedupe)
        running = asyncio.create_task(consumer.run())
        try:

            def done() -> bool:
                if running.done():
                    raise AssertionError(f"the consumer stopped early: {running.exception()!r}")
                return consumer.stats.dead_lettered >= 1 and len(applied) >= len(stored_ids) - 1

            await wait_until(
                done,
                20,
                lambda: (
                    f"every event applied but {poison_id}, which is dead-lettered "
                    f"(applied {len(applied)} of {len(stored_ids) - 1}, stats {consumer.stats})"
                ),
            )
        finally:
            consumer.stop()
            await asyncio.wait_for(running, 15)
        versions = await dedupe.applied_versions()
    finally:
        await pool.close()

    # Everything but the poison event was applied, once each, in order per zone.
    applied_ids = [e.id for e in applied]
    assert sorted(applied_ids) == sorted(set(stored_ids) - {poison_id}), "missing or extra"
    assert len(applied_ids) == len(set(applied_ids)), "an event was applied twice"
    assert in_order_per_aggregate(applied_ids)
    assert consumer.stats.dead_lettered == 1
    assert consumer.stats.applied == len(stored_ids) - 1
    assert consumer.stats.duplicates == 0
    assert len(poison_attempts) == config.max_attempts
    # The poison zone's later events were applied after it, on the same partition.
    poison = poison_attempts[0]
    later = [e.id for e in applied if e.partition == poison.partition and e.offset > poison.offset]
    assert {f"{poison_zone}:3", f"{poison_zone}:4"} <= set(later), "the partition is blocked"
    assert versions == {e.rpartition(":")[0]: 4 for e in stored_ids}

    # The dead letter: the original record, its headers, and what went wrong where.
    dead = await read_topic(broker, config.dead_letter_topic, 1, timeout=10)
    assert len(dead) == 1, f"{len(dead)} records on {config.dead_letter_topic}"
    (letter,) = dead
    h = {name: value.decode() for name, value in letter.headers}
    assert letter.key == poison_zone.encode()
    assert letter.value == poison.data
    assert h["dlq_error_type"] == "ValueError"
    assert f"cannot bill {poison_id}" in h["dlq_error"]
    assert h["dlq_attempts"] == str(config.max_attempts)
    assert h["dlq_group"] == group
    assert h["dlq_topic"] == zone_topic
    assert h["dlq_partition"] == str(poison.partition)
    assert h["dlq_offset"] == str(poison.offset)
    assert h["ce_id"] == poison_id
    assert h["ce_subject"] == poison_zone
    assert h["ce_aggregateversion"] == "2"
    assert h["ce_type"] == "io.cloudengine.zone.disabled.v1"
    assert h["ce_position"] == str(poison.position)
    assert h["ce_specversion"] == "1.0"
    assert h["content-type"] == "application/json"


# 3. A consumer process: SIGTERM, then a restart in the same group ----------------------------


class ConsumerProcess:
    """tests/integration/consumer_main.py running as its own process."""

    def __init__(self, bootstrap: str, group: str, topic: str, output: Path, log: Path) -> None:
        self.output = output
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(CONSUMER_MAIN), bootstrap, group, topic, str(output)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def lines(self) -> list[str]:
        return self.output.read_text().splitlines() if self.output.exists() else []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def wait_for_lines(self, count: int, timeout: float = 20) -> list[str]:
        def enough() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the consumer exited with {self.process.returncode}:\n{self.log_text()}"
                )
            return len(self.lines()) >= count

        try:
            await wait_until(enough, timeout, f"{count} lines in {self.output.name}")
        except AssertionError as e:
            raise AssertionError(f"{e} (has {len(self.lines())}); log:\n{self.log_text()}") from e
        return self.lines()

    async def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        await wait_until(
            lambda: self.process.poll() is not None,
            timeout,
            lambda: f"the consumer to exit after SIGTERM; log:\n{self.log_text()}",
        )
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


async def test_consumer_stops_cleanly_on_sigterm_and_resumes_after_its_commit(
    service: CommandService,
    store: EventStore,
    pg_target: DatabaseTarget,
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
):
    group = f"{topic_prefix}-audit"
    topic = topic_for(topic_prefix, "zone")
    output = tmp_path / "applied.txt"
    first_ids = await asyncio.to_thread(zone_history, service, 5, "old")
    n = len(first_ids)
    async with running_relay(pg_target, broker, topic_prefix) as (relay, task):
        await relayed(relay, task, store)

        first = ConsumerProcess(broker, group, topic, output, tmp_path / "first.log")
        try:
            lines = await first.wait_for_lines(n)
            code = await first.terminate()
        finally:
            first.kill()
        assert code == 0, f"exit code {code} after SIGTERM; log:\n{first.log_text()}"
        assert sorted(lines) == sorted(first_ids)
        assert len(first.lines()) == n, "the first run applied more than was stored"

        new_ids = await asyncio.to_thread(zone_history, service, 3, "new")
        m = len(new_ids)
        await relayed(relay, task, store)

        # On the dev broker the restart takes ~18 s, not ~5: Tansu numbers a
        # group's first generation 0 and aiokafka only sends LeaveGroup from
        # generation 1 on, so the first run's member lingers until its session
        # times out (10 s) and the second run has to join twice.
        second = ConsumerProcess(broker, group, topic, output, tmp_path / "second.log")
        try:
            lines = await second.wait_for_lines(n + m, timeout=40)
            await asyncio.sleep(0.5)  # a redelivery would show up as more lines
            lines = second.lines()
            code = await second.terminate()
        finally:
            second.kill()
        assert code == 0, f"exit code {code} after SIGTERM; log:\n{second.log_text()}"

    repeated = sorted(line for line, times in Counter(lines).items() if times > 1)
    assert not repeated, f"delivered again after the restart (offsets not committed): {repeated}"
    assert len(lines) == n + m
    assert sorted(lines[n:]) == sorted(new_ids), "the second run did not get only the new events"
    assert in_order_per_aggregate(lines[:n]) and in_order_per_aggregate(lines[n:])
