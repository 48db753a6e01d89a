"""Commands over Kafka against the real broker and PostgreSQL: a plain
aiokafka client sends 100 commands (5 sent twice, 5 invalid) and gets
exactly 95 distinct answers; the duplicates ran once (the event store
says so), the refusals are the HTTP API's problem documents, and the
token is nowhere in the log or the gateway's ledger."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import structlog.testing
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from api_harness import Api, make_fabric, vm_body
from eventsourcing.utils import get_topic
from prometheus_client import CollectorRegistry

from cloud_engine.api.kafka_gateway import CommandGateway, GatewayConfig
from cloud_engine.api.kafka_ledger import TABLE as LEDGER
from cloud_engine.api.kafka_metrics import GatewayMetrics
from cloud_engine.bus.command_topics import commands_topic, results_topic
from cloud_engine.bus.naming import all_event_types
from cloud_engine.infra.database import parse_database_url
from cloud_engine.infra.pg import connect
from cloud_engine.infra.tables import events_table

SOURCE = "/tests/integrator"


class Gateway:
    def __init__(
        self, gateway: CommandGateway, metrics: GatewayMetrics, task: asyncio.Task[None]
    ) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.task = task

    def handled(self) -> float:
        answered = sum(
            s.value
            for m in self.metrics.answered.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        return answered + self.metrics.duplicates._value.get()


@pytest.fixture
async def gateway(api: Api, broker: str, topic_prefix: str) -> AsyncIterator[Gateway]:
    metrics = GatewayMetrics(CollectorRegistry())
    config = GatewayConfig(bootstrap=broker, topic_prefix=topic_prefix, partitions=2)
    gateway = CommandGateway(api.service, api.store, api.target, config, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    started = asyncio.create_task(gateway.started.wait())
    await asyncio.wait({task, started}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises why it did not start
    assert gateway.started.is_set(), "the gateway did not start"
    try:
        yield Gateway(gateway, metrics, task)
    finally:
        stop.set()
        await task


def command(
    ce_type: str, data: Any, token: str | None, ce_id: str | None = None
) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    ce_id = ce_id or uuid.uuid4().hex
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", ce_type.encode()),
        ("content-type", b"application/json"),
    ]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}".encode()))
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return ce_id, raw, headers


def deploy(fabric: Any, name: str, account: str = "alice", **extra: Any) -> dict[str, Any]:
    body = vm_body(fabric, name, **extra)
    return {"account": account, "network_ids": [], **body}


async def test_hundred_commands_get_95_answers_and_duplicates_run_once(
    api: Api, gateway: Gateway, broker: str, topic_prefix: str
) -> None:
    fabric = await make_fabric(api)
    sends: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
    for i in range(85):
        sends.append(command("DeployVm", deploy(fabric, f"k{i}"), api.alice))
    for i in range(5):
        sends.append(command("CreateZone", {"name": f"kz{i}"}, api.admin))
    invalid = {
        "bad-token": command("DeployVm", deploy(fabric, "x1"), "ce_not-a-token"),
        "not-admin": command("CreateZone", {"name": "nope"}, api.alice),
        "bad-cpus": command(
            "DeployVm",
            {**deploy(fabric, "x2"), "spec": {"cpus": 0, "ram_mb": 256, "root_disk_gb": 1}},
            api.alice,
        ),
        "internal": command("MarkVmRunning", {"vm_id": str(uuid.uuid4())}, api.admin),
        "no-template": command(
            "DeployVm", {**deploy(fabric, "x3"), "template_id": str(uuid.uuid4())}, api.alice
        ),
    }
    sends.extend(invalid.values())
    duplicates = [sends[i] for i in (0, 10, 20, 30, 86)]
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        for ce_id, raw, headers in [*sends, *duplicates]:
            # Keyed by command: they run concurrently (a key's commands in order).
            await producer.send(commands_topic(topic_prefix), raw, ce_id.encode(), headers=headers)
        await producer.flush()
    finally:
        await producer.stop()
    assert len(sends) + len(duplicates) == 100

    async with asyncio.timeout(120):
        while gateway.handled() < 100:
            await asyncio.sleep(0.05)
    answers = await read_all(broker, results_topic(topic_prefix))
    keys = [a["key"] for a in answers]
    assert len(answers) == 95 and len(set(keys)) == 95
    assert set(keys) == {ce_id for ce_id, _, _ in sends}
    by_id = {a["key"]: a for a in answers}
    for ce_id, _, _ in sends[:90]:
        answer = by_id[ce_id]
        assert answer["headers"]["ce_type"] == "io.cloudengine.command.accepted.v1"
        assert answer["headers"]["ce_subject"] == ce_id
        assert answer["headers"]["ce_commandsource"] == SOURCE
        assert answer["value"]["position"] > 0
    deploys = [by_id[ce_id]["value"] for ce_id, _, _ in sends[:85]]
    assert all(d["operation_id"] and d["resource_type"] == "vm" for d in deploys)
    assert len({d["operation_id"] for d in deploys}) == 85
    statuses = {name: by_id[ce_id]["value"]["status"] for name, (ce_id, _, _) in invalid.items()}
    assert statuses == {
        "bad-token": 401, "not-admin": 403, "bad-cpus": 422, "internal": 400, "no-template": 404,
    }  # fmt: skip
    for name, (ce_id, _, _) in invalid.items():
        answer = by_id[ce_id]
        assert answer["headers"]["ce_type"] == "io.cloudengine.command.refused.v1", name
        assert answer["headers"]["content-type"] == "application/problem+json"
        assert answer["headers"]["ce_status"] == str(statuses[name])
    # The same problem document as over HTTP (but where it was sent).
    over_http = await api.post(
        "/v1/vms", {**vm_body(fabric, "x2"), "spec": {"cpus": 0, "ram_mb": 256,
                                                     "root_disk_gb": 1}}, token=api.alice,
    )  # fmt: skip
    refused = by_id[invalid["bad-cpus"][0]]["value"]
    http_problem = over_http.json()
    for field in ("type", "title", "status", "detail", "field"):
        assert refused[field] == http_problem[field], field

    # Executed once: 85 deploys, 85 operations and VMs in the log.
    conn = await connect(api.target)
    try:
        created = {
            t.aggregate: get_topic(t.cls)
            for t in all_event_types()
            if t.name == "created" and t.aggregate in ("vm", "operation")
        }
        for aggregate, topic in created.items():
            n = await conn.fetchval(
                f"SELECT count(*) FROM {events_table(api.target.schema)} WHERE topic = $1", topic
            )
            assert n == 85, aggregate
        for secret in (api.alice, api.admin):
            await assert_nowhere(conn, api.target.schema, secret)
    finally:
        await conn.close()


async def assert_nowhere(conn: asyncpg.Connection, schema: str, secret: str) -> None:
    hits = await conn.fetchval(
        f"SELECT count(*) FROM {events_table(schema)} WHERE position($1::bytea IN state) > 0",
        secret.encode(),
    )
    assert hits == 0
    hits = await conn.fetchval(
        f'SELECT count(*) FROM "{schema}".{LEDGER} WHERE position($1::bytea IN answer) > 0',
        secret.encode(),
    )
    assert hits == 0


async def read_all(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record on the topic, from its first offset to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer.topics()
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[dict[str, Any]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                for r in batch:
                    records.append(
                        {
                            "key": r.key.decode() if r.key else None,
                            "value": json.loads(r.value or b"null"),
                            "headers": {k: v.decode() for k, v in r.headers},
                        }
                    )
        return records
    finally:
        await consumer.stop()


async def test_a_gateway_that_died_answers_once_what_it_had_done(
    api: Api, gateway: Gateway, broker: str, topic_prefix: str
) -> None:
    """Died after recording an answer, before publishing it: the recorded
    answer is published, nothing runs again. Died after executing, before
    recording: the engine's idempotency key (ce_id, per token as over
    HTTP) gives back the first result, so the zone is created once."""
    recorded_id, raw, headers = command("CreateZone", {"name": "recorded"}, api.admin)
    conn = await connect(api.target)
    try:
        await conn.execute(
            f'INSERT INTO "{api.target.schema}".{LEDGER}'
            " (source, id, token_sha256, command_type, status, answer)"
            " VALUES ($1, $2, sha256($3::bytea), 'CreateZone', 202, $4)",
            SOURCE, recorded_id, f"Bearer {api.admin}".encode(), b'{"first": true}',
        )  # fmt: skip
        executed_id, raw2, headers2 = command("CreateZone", {"name": "executed"}, api.admin)
        first = await api.post("/v1/zones", {"name": "executed"}, key=executed_id)
        assert first.status == 202
        producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
        await producer.start()
        try:
            for ce_id, value, sent in ((recorded_id, raw, headers), (executed_id, raw2, headers2)):
                await producer.send_and_wait(
                    commands_topic(topic_prefix), value, ce_id.encode(), headers=sent
                )
        finally:
            await producer.stop()
        async with asyncio.timeout(60):
            while gateway.handled() < 2:
                await asyncio.sleep(0.05)
        answers = {a["key"]: a for a in await read_all(broker, results_topic(topic_prefix))}
        assert len(answers) == 2
        assert answers[recorded_id]["value"] == {"first": True}
        replayed = answers[executed_id]["value"]
        assert replayed["resource_id"] == first.json()["resource_id"] and replayed["replayed"]
        zones = await conn.fetchval(
            f"SELECT count(*) FROM {events_table(api.target.schema)} WHERE topic = $1",
            next(get_topic(t.cls) for t in all_event_types() if t.event == "zone.created"),
        )
        assert zones == 1
        published = await conn.fetchval(
            f'SELECT bool_and(published) FROM "{api.target.schema}".{LEDGER}'
        )
        assert published
    finally:
        await conn.close()


async def test_the_gateway_waits_out_a_database_outage(
    api: Api, gateway: Gateway, broker: str, topic_prefix: str
) -> None:
    """The ledger gone (as when PostgreSQL is down: the same error class
    the API answers 503 for): the gateway retries instead of failing, and
    answers once it is back."""
    schema = api.target.schema
    conn = await connect(api.target)
    try:
        await conn.execute(f'ALTER TABLE "{schema}".{LEDGER} RENAME TO away')
        ce_id, raw, headers = command("CreateZone", {"name": "patient"}, api.admin)
        with structlog.testing.capture_logs() as logs:
            producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(
                    commands_topic(topic_prefix), raw, ce_id.encode(), headers=headers
                )
            finally:
                await producer.stop()
            async with asyncio.timeout(60):
                while not any("retrying" in entry["event"] for entry in logs):
                    await asyncio.sleep(0.05)
        await conn.execute(f'ALTER TABLE "{schema}".away RENAME TO {LEDGER}')
        async with asyncio.timeout(60):
            while gateway.handled() < 1:
                await asyncio.sleep(0.05)
        assert not gateway.task.done()
        answers = await read_all(broker, results_topic(topic_prefix))
        assert [a["key"] for a in answers] == [ce_id]
        assert answers[0]["headers"]["ce_status"] == "202"
    finally:
        await conn.close()


async def test_a_gateway_started_while_the_event_store_is_down_waits_for_it(
    api: Api, broker: str, topic_prefix: str
) -> None:
    """It ended instead, and took the API process (and the HTTP requests in
    flight, answered 500) with it: the chaos run's clients saw that when
    PostgreSQL was killed just before the API restarted."""
    nowhere = parse_database_url("postgresql://postgres@127.0.0.1:1/cloudengine")
    metrics = GatewayMetrics(CollectorRegistry())
    config = GatewayConfig(bootstrap=broker, topic_prefix=topic_prefix, partitions=2)
    gateway = CommandGateway(api.service, api.store, nowhere, config, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    async with asyncio.timeout(60):
        while gateway.database_waits < 2:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 30)  # ends cleanly once asked, not with the error
    assert not gateway.started.is_set()
