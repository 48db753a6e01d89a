"""Commands over Kafka: the gateway that reads `<prefix>.commands` and
answers each command once on `<prefix>.command.results`.

Another transport of the API, like the HTTP routes: the caller's token is
verified as a bearer token is (api.tokens), the command goes back to the
route that builds it (api.kafka_commands) and through the same checks and
execution (api.commands.run_call), and the answer is the HTTP API's 202
body or its problem document. ce_id is the engine's idempotency key, so a
command is executed once however often it is delivered; the ledger
(api.kafka_ledger) makes it answered once. Commands run as they arrive,
without waiting for the ones before them (the engine's writer commits
concurrent commands together), except that those with the same record key
run in the order sent; a partition's offsets are committed up to its first
command not answered yet (api.kafka_offsets).

A dependency that is down (PostgreSQL, the engine's writer) is waited out
and the command tried again: it is not the caller's fault, and a refusal
saying "retry" would only make the caller send it again. The token is
never logged nor copied anywhere (the ledger keeps its SHA-256 only).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass

import asyncpg
import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from cloud_engine.api import kafka_commands, kafka_ledger, tokens
from cloud_engine.api.auth import Principal, bearer_token, require_access
from cloud_engine.api.commands import run_call
from cloud_engine.api.context import ApiContext, valid_key
from cloud_engine.api.kafka_answers import (
    RETRY_S,
    AnswerWriter,
    Delivery,
    Stopped,
    duplicate,
    patiently,
)
from cloud_engine.api.kafka_ledger import Answer, Key
from cloud_engine.api.kafka_metrics import GatewayMetrics
from cloud_engine.api.kafka_offsets import Offsets
from cloud_engine.api.metrics import ApiMetrics
from cloud_engine.api.owners import Owners
from cloud_engine.api.problems import UNAVAILABLE, ApiError, bad_request, unauthorized, unavailable
from cloud_engine.bus.command_topics import (
    Incoming,
    commands_topic,
    gateway_group,
    results_topic,
)
from cloud_engine.bus.relay import DATABASE_ERRORS
from cloud_engine.bus.topics import ensure_topics
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool

log = structlog.get_logger("api.kafka_gateway")

_encoder = msgspec.json.Encoder()
# Offsets are committed at most this often (each commit is a broker round
# trip the next fetch would wait for); a crash redelivers what was not
# committed, and the ledger answers none of it twice.
COMMIT_EVERY_S = 0.1
OPEN_RETRY_S = 1.0  # between start-up attempts while the event store is down


@dataclass
class GatewayConfig:
    bootstrap: str
    topic_prefix: str
    # ce_source of the answers (CLOUD_ENGINE_EVENT_SOURCE).
    source: str = "/cloudengine"
    partitions: int = 8
    # The dev broker answers a fetch only when this expires: it bounds the
    # wait of a command that arrives while the gateway is idle.
    fetch_max_wait_ms: int = 10
    max_records: int = 500
    # Commands running at once; past it the gateway stops fetching.
    max_in_flight: int = 1000
    command_timeout: float = 30.0


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
        # Deliveries being answered, by command: a second delivery meanwhile waits.
        self._answering: dict[Key, asyncio.Task[None]] = {}
        # Set once it consumes (its tables made, its group joined).
        self.started = asyncio.Event()
        self.database_waits = 0  # start-up attempts the event store refused

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        config = self.config
        await ensure_topics(
            config.bootstrap,
            [commands_topic(config.topic_prefix), results_topic(config.topic_prefix)],
            config.partitions,
        )
        pool = await self._open_pool(stop)
        if pool is None:
            return  # stopped while the event store was unreachable
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
            await self._consume(ctx, consumer, producer)
        finally:
            for step in (consumer.stop(), producer.stop(), pool.close()):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(step, 10)
            log.info("command gateway stopped")

    async def _open_pool(self, stop: asyncio.Event) -> asyncpg.Pool | None:
        """The gateway's pool, once the event store answers. Started while
        PostgreSQL is down (a crash, a restart), it waits instead of ending
        the API process (which took the HTTP requests in flight with it)."""
        while not stop.is_set():
            try:
                return await create_pool(self.target, max_size=8, single_reads=True)
            except DATABASE_ERRORS as e:
                self.database_waits += 1
                log.warning("event store unreachable, waiting", error=repr(e))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), OPEN_RETRY_S)
        return None

    async def _consume(
        self, ctx: ApiContext, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer
    ) -> None:
        """Fetch, start each command as it comes (after the one before it
        with the same record key), commit what is answered; on stop, let
        what runs finish (or give up waiting for a dependency) first."""
        offsets = Offsets()
        writer = AnswerWriter(
            ctx.pool,
            ctx.schema,
            producer,
            results_topic(self.config.topic_prefix),
            self.config.source,
            self.metrics,
        )
        writer.stopping = self._stop
        writing_stop = asyncio.Event()
        writing = asyncio.create_task(writer.run(writing_stop))
        running: set[asyncio.Task[None]] = set()
        last: dict[tuple[TopicPartition, bytes | None], asyncio.Task[None]] = {}
        failed: list[BaseException] = []
        committed_at = 0.0

        def finished(task: asyncio.Task[None], tp: TopicPartition, offset: int) -> None:
            running.discard(task)
            error = None if task.cancelled() else task.exception()
            if error is None:
                offsets.done(tp, offset)
            elif not isinstance(error, Stopped):
                failed.append(error)

        try:
            while not self._stop.is_set() and not failed and not writing.done():
                while len(running) >= self.config.max_in_flight:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                batches = await consumer.getmany(
                    timeout_ms=100, max_records=self.config.max_records
                )
                items = self._items(batches, offsets)
                keys = [i.key for i in items]
                try:
                    known = await patiently(
                        "looking up answered commands",
                        functools.partial(kafka_ledger.find, ctx.pool, ctx.schema, keys),
                        self._stop,
                    )
                except Stopped:
                    break  # not started: redelivered to the next gateway
                for item in items:
                    chain = (item.tp, item.record.key)
                    task = asyncio.create_task(
                        self._one(ctx, item, known.get(item.key), last.get(chain), writer)
                    )
                    last[chain] = task
                    running.add(task)
                    task.add_done_callback(
                        functools.partial(finished, tp=item.tp, offset=item.record.offset)
                    )
                for chain in [c for c, t in last.items() if t.done()]:
                    del last[chain]
                if time.monotonic() - committed_at >= COMMIT_EVERY_S:
                    committed_at = time.monotonic()
                    await self._commit(consumer, offsets)
        finally:
            if running and not writing.done():
                await asyncio.wait(running)
            writing_stop.set()
            await asyncio.wait([writing])
            for task in running:
                task.cancel()
            await self._commit(consumer, offsets)
        error = writing.exception()
        if error is not None and not isinstance(error, Stopped):
            raise error
        if failed:
            raise failed[0]

    def _items(
        self,
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        offsets: Offsets,
    ) -> list[Delivery]:
        items: list[Delivery] = []
        for tp, records in batches.items():
            for record in records:
                offsets.add(tp, record.offset)
                incoming = Incoming.of(record.headers)
                if not incoming.id:
                    self.metrics.unanswerable.inc()
                    log.warning(
                        "command without ce_id: no answer can name it",
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                    )
                    offsets.done(tp, record.offset)
                    continue
                key = Key.of(incoming.source, incoming.id, incoming.token)
                items.append(Delivery(record, incoming, key, tp))
        return items

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: Offsets) -> None:
        moved = offsets.committable()
        if not moved:
            return
        try:
            commit = consumer.commit({tp: OffsetAndMetadata(n, "") for tp, n in moved.items()})
            await asyncio.wait_for(commit, 10)
        except (CommitFailedError, KafkaError, TimeoutError) as e:
            # Rebalanced or broker gone: the next owner redelivers, and the
            # ledger keeps those from being answered twice.
            log.warning("offset commit failed", error=repr(e))

    async def _one(
        self,
        ctx: ApiContext,
        item: Delivery,
        before: Answer | None,
        previous: asyncio.Task[None] | None,
        writer: AnswerWriter,
    ) -> None:
        """One delivery: answered (executing the command if it is new), or
        counted as a duplicate."""
        if previous is not None:
            await asyncio.wait([previous])  # its own failure is reported by its task
        first = self._answering.get(item.key)
        if first is not None:  # the same command, delivered again meanwhile
            await asyncio.wait([first])
            return duplicate(self.metrics, item)
        this = asyncio.current_task()
        assert this is not None
        self._answering[item.key] = this
        try:
            if before is not None and before.published:
                return duplicate(self.metrics, item)
            # Recorded but not published: the gateway died in between.
            answer = before if before is not None else await self._answer(ctx, item)
            await writer.answer(item, answer)
        finally:
            del self._answering[item.key]

    async def _answer(self, ctx: ApiContext, item: Delivery) -> Answer:
        """The answer to one command, executing it if it is sound; waits out
        dependencies that are down (raising Stopped if asked to stop)."""
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
                raise Stopped

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
