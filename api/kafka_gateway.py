"""Commands over Kafka: the gateway that reads `<prefix>.commands` and
answers each command once on `<prefix>.command.results`.

Another transport of the API, like the HTTP routes: the caller's token is
verified as a bearer token is (api.tokens), the command goes back to the
route that builds it (api.kafka_commands) and through the same checks and
execution (api.commands.run_call), and the answer is the HTTP API's 202
body or its problem document. ce_id is the engine's idempotency key, so a
command is executed once however often it is delivered; the ledger
(api.kafka_ledger) makes it answered once. A poll's commands run at once,
those with the same record key in the order sent; offsets are committed
once their answers are published and recorded as such.

A dependency that is down (PostgreSQL, the engine's writer) is waited out
and the command tried again: it is not the caller's fault, and a refusal
saying "retry" would only make the caller send it again. The token is
never logged nor copied anywhere (the ledger keeps its SHA-256 only).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Histogram

from cloud_engine.api import kafka_commands, kafka_ledger, tokens
from cloud_engine.api.auth import Principal, bearer_token, require_access
from cloud_engine.api.commands import run_call
from cloud_engine.api.context import ApiContext, valid_key
from cloud_engine.api.kafka_ledger import Answer, Key
from cloud_engine.api.metrics import BUCKETS, ApiMetrics
from cloud_engine.api.owners import Owners
from cloud_engine.api.problems import UNAVAILABLE, ApiError, bad_request, unauthorized, unavailable
from cloud_engine.bus.command_topics import (
    Incoming,
    Outcome,
    answer_headers,
    commands_topic,
    gateway_group,
    results_topic,
)
from cloud_engine.bus.topics import ensure_topics
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool

log = structlog.get_logger("api.kafka_gateway")

_encoder = msgspec.json.Encoder()
# Waits before trying a command again while a dependency is down.
RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class GatewayConfig:
    bootstrap: str
    topic_prefix: str
    # ce_source of the answers (CLOUD_ENGINE_EVENT_SOURCE).
    source: str = "/cloudengine"
    partitions: int = 8
    # The dev broker answers a fetch only when this expires: it bounds the
    # wait of a command that arrives while the gateway is idle.
    fetch_max_wait_ms: int = 5
    max_records: int = 500
    command_timeout: float = 30.0


class GatewayMetrics:
    """Made once per process (`up` restarts the gateway, its counters go on)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answered = Counter(
            "cloudengine_kafka_commands",
            "Commands answered on the results topic, by outcome and HTTP-equivalent status",
            ["outcome", "status"],
            registry=registry,
        )
        self.duplicates = Counter(
            "cloudengine_kafka_command_duplicates",
            "Deliveries of a command already answered (not executed nor answered again)",
            registry=registry,
        )
        self.unanswerable = Counter(
            "cloudengine_kafka_commands_unanswerable",
            "Records on the commands topic without a ce_id to answer to (logged, skipped)",
            registry=registry,
        )
        self.round_trip = Histogram(
            "cloudengine_kafka_command_seconds",
            "From a command's record timestamp to its answer acknowledged by the broker",
            buckets=BUCKETS,
            registry=registry,
        )


class _Stopped(Exception):
    """Stop was asked while a command waited for a dependency."""


@dataclass
class _Item:
    record: ConsumerRecord[bytes, bytes]
    incoming: Incoming
    key: Key


class CommandGateway:
    def __init__(
        self,
        service: CommandService,
        store: EventStore,
        target: DatabaseTarget,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        api_metrics: ApiMetrics | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.target = target
        self.config = config
        self.metrics = metrics
        self.api_metrics = api_metrics or ApiMetrics()
        self._stop = asyncio.Event()
        # Set once it consumes (its tables made, its group joined).
        self.started = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        config = self.config
        await ensure_topics(
            config.bootstrap,
            [commands_topic(config.topic_prefix), results_topic(config.topic_prefix)],
            config.partitions,
        )
        pool = await create_pool(self.target, max_size=4, single_reads=True)
        consumer = AIOKafkaConsumer(
            commands_topic(config.topic_prefix),
            bootstrap_servers=config.bootstrap,
            group_id=gateway_group(config.topic_prefix),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            metadata_max_age_ms=5000,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap, acks="all", enable_idempotence=False
        )
        try:
            async with pool.acquire() as conn:
                await tokens.prepare(conn, self.target.schema)
                await kafka_ledger.prepare(conn, self.target.schema)
            ctx = ApiContext(
                service=self.service,
                store=self.store,
                schema=self.target.schema,
                pool=pool,
                tokens=tokens.TokenStore(pool, self.target.schema),
                owners=Owners(pool, self.target.schema),
                metrics=self.api_metrics,
                command_timeout=config.command_timeout,
            )
            await asyncio.wait_for(producer.start(), 30)
            await asyncio.wait_for(consumer.start(), 30)
            self.started.set()
            log.info(
                "command gateway started",
                topic=commands_topic(config.topic_prefix),
                results=results_topic(config.topic_prefix),
            )
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=config.max_records)
                if not batches:
                    continue
                try:
                    await self._handle(ctx, batches, producer)
                except _Stopped:
                    break  # not committed: the next gateway answers them
                await self._commit(consumer, batches)
        finally:
            for step in (consumer.stop(), producer.stop(), pool.close()):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(step, 10)
            log.info("command gateway stopped")

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batches.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as e:
            # Rebalanced or broker gone: the next owner redelivers, and the
            # ledger keeps those from being answered twice.
            log.warning("offset commit failed", error=repr(e))

    async def _handle(
        self,
        ctx: ApiContext,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        producer: AIOKafkaProducer,
    ) -> None:
        items: list[_Item] = []
        for records in batches.values():
            for record in records:
                incoming = Incoming.of(record.headers)
                if not incoming.id:
                    self.metrics.unanswerable.inc()
                    log.warning(
                        "command without ce_id: no answer can name it",
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                    )
                    continue
                key = Key.of(incoming.source, incoming.id, incoming.token)
                items.append(_Item(record, incoming, key))
        known = await kafka_ledger.find(ctx.pool, ctx.schema, [i.key for i in items])
        republish: dict[Key, Answer] = {}
        chains: dict[tuple[TopicPartition, bytes | None], list[_Item]] = {}
        seen: set[Key] = set()
        for item in items:
            first = item.key not in seen
            seen.add(item.key)
            before = known.get(item.key)
            if first and before is not None and not before.published:
                republish[item.key] = before  # answered, not published: the gateway died
            elif first and before is None:
                tp = TopicPartition(item.record.topic, item.record.partition)
                chains.setdefault((tp, item.record.key), []).append(item)
            else:
                self.metrics.duplicates.inc()
                log.info(
                    "duplicate command, already answered",
                    ce_id=item.incoming.id,
                    ce_source=item.incoming.source,
                    ce_type=item.incoming.type,
                )

        async def in_order(chain: list[_Item]) -> list[Answer]:
            return [await self._answer(ctx, item) for item in chain]

        answers = [a for c in await asyncio.gather(*map(in_order, chains.values())) for a in c]
        recorded = await kafka_ledger.record(ctx.pool, ctx.schema, answers)
        for answer in answers:
            mine = recorded.get(answer.key, answer)
            if not mine.published:
                republish[answer.key] = mine
        by_key = {i.key: i for i in items}
        await self._publish(producer, [(by_key[k], a) for k, a in republish.items()])
        await kafka_ledger.mark_published(ctx.pool, ctx.schema, list(republish))

    async def _publish(
        self, producer: AIOKafkaProducer, answers: Sequence[tuple[_Item, Answer]]
    ) -> None:
        topic = results_topic(self.config.topic_prefix)
        sent = []
        for item, answer in answers:
            outcome: Outcome = "accepted" if answer.status == 202 else "refused"
            headers = answer_headers(
                item.incoming, outcome, answer.status, source=self.config.source
            )
            sent.append(
                await producer.send(
                    topic, value=answer.value, key=item.incoming.id.encode(), headers=headers
                )
            )
        await asyncio.gather(*sent)
        now = time.time()
        for item, answer in answers:
            outcome = "accepted" if answer.status == 202 else "refused"
            self.metrics.answered.labels(outcome, str(answer.status)).inc()
            self.metrics.round_trip.observe(max(0.0, now - item.record.timestamp / 1000))
            log.info(
                "command answered",
                ce_id=item.incoming.id,
                ce_source=item.incoming.source,
                ce_type=item.incoming.type,
                outcome=outcome,
                status=answer.status,
            )

    async def _answer(self, ctx: ApiContext, item: _Item) -> Answer:
        """The answer to one command, executing it if it is sound; waits out
        dependencies that are down (raising _Stopped if asked to stop)."""
        incoming = item.incoming
        attempt = 0
        while True:
            try:
                accepted = await self._execute(ctx, incoming, item.record.value or b"")
                return Answer(
                    key=item.key,
                    command_type=incoming.type,
                    status=202,
                    value=_encoder.encode(accepted),
                )
            except ApiError as error:
                if error.status != 503:
                    problem = error.problem(instance=None, request_id=incoming.id)
                    return Answer(
                        key=item.key,
                        command_type=incoming.type,
                        status=error.status,
                        value=_encoder.encode(problem),
                    )
                reason = error.detail
            except UNAVAILABLE as error:
                reason = repr(error)
            except Exception as error:
                # A bug, as a 500 is over HTTP: the traceback to the log
                # under the ce_id, the sender told, the partition moving on
                # (trying again would only fail again).
                log.error("command failed", ce_id=incoming.id, error=repr(error), exc_info=error)
                internal = ApiError(
                    500, "internal", "the command failed on the server; its ce_id is in the log"
                )
                return Answer(
                    key=item.key,
                    command_type=incoming.type,
                    status=500,
                    value=_encoder.encode(internal.problem(request_id=incoming.id)),
                )
            delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            attempt += 1
            log.warning(
                "command waits for a dependency", ce_id=incoming.id, reason=reason, retry_in_s=delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                raise _Stopped

    async def _execute(self, ctx: ApiContext, incoming: Incoming, value: bytes) -> object:
        if not valid_key(incoming.id):
            raise bad_request(
                "ce_id must be 1 to 255 printable ASCII characters without spaces", field="ce_id"
            )
        if not incoming.source:
            raise bad_request("a command needs a ce_source header", field="ce_source")
        media = incoming.content_type.split(";", 1)[0].strip().lower()
        if media and media != "application/json":
            raise ApiError(
                415, "unsupported-media-type", "a command is application/json",
                field="content-type",
            )  # fmt: skip
        principal = await self._principal(ctx, incoming.token)
        command, offered = kafka_commands.decode(incoming.type, value)
        require_access(principal, offered.route.access, write=True)
        call = kafka_commands.to_call(command, offered, principal)
        return await run_call(
            ctx,
            offered.route,
            call,
            incoming.id,
            incoming.id,
            target_field=offered.target_field or "id",
        )

    async def _principal(self, ctx: ApiContext, header: str) -> Principal:
        if not header:
            raise unauthorized("a command needs an authorization header: Bearer <token>")
        token = bearer_token(header)
        try:
            principal = await ctx.tokens.verify(token)
        except (TimeoutError, OSError) as error:
            raise unavailable("cannot check the token: the database is unreachable") from error
        if principal is None:
            raise unauthorized("the bearer token is not valid")
        return principal
