"""The live event stream: GET /v1/stream, server-sent events fed from Kafka.

One consumer per API process reads every `<prefix>.<aggregate>.events`
topic from its end (no consumer group: nothing to commit, every process sees
every event) and hands each event to the open streams allowed to see it. Who
owns an event's aggregate comes from the log (api.owners, remembered), asked
once per event, not once per stream: an admin sees everything, a user only
the events of its own account's resources (never the fabric's or catalog's,
never another account's).

A stream is `text/event-stream`: `id` is the CloudEvent's ce_id, `event` is
`cloudevent`, `data` one JSON object (LiveEvent). A comment line every
HEARTBEAT_S keeps proxies from closing an idle stream. The console reads it
with fetch() (EventSource cannot send an Authorization header); curl -N works.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cloud_engine.api.auth import Principal
from cloud_engine.api.context import context_of, principal_of
from cloud_engine.api.owners import Owners
from cloud_engine.api.problems import ApiError
from cloud_engine.bus.cloudevents import CloudEvent, MalformedEvent, from_record
from cloud_engine.bus.naming import parse_type, topic_for
from cloud_engine.engine.catalog import AGGREGATES

log = structlog.get_logger("api.live")

HEARTBEAT_S = 15.0
# Events waiting for a slow reader; past this the stream is closed (the
# console reconnects and reloads) rather than the process growing.
QUEUE_LIMIT = 1000
MAX_STREAMS = 200


class LiveEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the stream: the CloudEvent's attributes and its data."""

    id: str  # ce_id: <aggregate id>:<version>
    type: str  # ce_type
    aggregate_type: str  # "vm"
    aggregate_id: str
    event: str  # "started"
    version: int
    position: int
    time: str  # when it was recorded (ce_time)
    actor: str
    correlation_id: str
    data: msgspec.Raw


@dataclass(frozen=True)
class LiveConfig:
    bootstrap: str
    topic_prefix: str


@dataclass(eq=False)
class _Stream:
    principal: Principal
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))


class LiveFeed:
    """The one consumer of a process and the streams it feeds."""

    def __init__(self, config: LiveConfig, owners: Owners) -> None:
        self.config = config
        self._owners = owners
        self._streams: set[_Stream] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-feed")

    def end_streams(self) -> None:
        """End every stream and refuse new ones: the server is stopping and
        must not wait for clients that never hang up."""
        self.closed.set()
        for stream in list(self._streams):
            with contextlib.suppress(asyncio.QueueEmpty):
                stream.queue.get_nowait()
            stream.queue.put_nowait(None)
        self._streams.clear()

    async def close(self) -> None:
        self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        topics = [topic_for(self.config.topic_prefix, a) for a in AGGREGATES]
        while True:
            consumer = AIOKafkaConsumer(
                *topics,
                bootstrap_servers=self.config.bootstrap,
                group_id=None,
                auto_offset_reset="latest",
                enable_auto_commit=False,
                # Live means now: a fetch returns as soon as there is a record,
                # and waits at most this long when there is none.
                fetch_max_wait_ms=50,
                # Topics the relay creates later are found within seconds.
                metadata_max_age_ms=5000,
            )
            try:
                await consumer.start()
                log.info("live feed started", topics=len(topics))
                while True:
                    batches = await consumer.getmany(timeout_ms=1000)
                    for records in batches.values():
                        for record in records:
                            await self._deliver(record.headers, record.value)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker is down: try again
                log.warning("live feed interrupted", error=repr(error))
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _deliver(self, headers: object, value: bytes | None) -> None:
        if not self._streams:
            return
        try:
            event = from_record(headers, value)  # type: ignore[arg-type]
        except MalformedEvent:
            return
        account = None
        if any(not stream.principal.is_admin for stream in self._streams):
            account = await self._account(event)
        line: bytes | None = None
        for stream in list(self._streams):
            if not (stream.principal.is_admin or account == stream.principal.account):
                continue
            if line is None:
                line = _sse(event)
            try:
                stream.queue.put_nowait(line)
            except asyncio.QueueFull:
                self._streams.discard(stream)
                with contextlib.suppress(asyncio.QueueEmpty):
                    stream.queue.get_nowait()
                stream.queue.put_nowait(None)

    async def _account(self, event: CloudEvent) -> str | None:
        try:
            owner = await self._owners.of(UUID(event.subject))
        except ValueError:
            return None
        return None if owner is None else owner.account

    async def stream(self, principal: Principal) -> AsyncIterator[bytes]:
        if len(self._streams) >= MAX_STREAMS:
            raise ApiError(503, "too-many-streams", "too many open event streams; retry later")
        stream = _Stream(principal)
        self._streams.add(stream)

        async def lines() -> AsyncIterator[bytes]:
            try:
                # Sent at once, so a client knows the stream is open.
                yield b": open\nretry: 1000\n\n"
                while True:
                    try:
                        line = await asyncio.wait_for(stream.queue.get(), HEARTBEAT_S)
                    except TimeoutError:
                        yield b": heartbeat\n\n"
                        continue
                    if line is None:
                        return
                    yield line
            finally:
                self._streams.discard(stream)

        return lines()


def _sse(event: CloudEvent) -> bytes:
    parsed = parse_type(event.type)
    live = LiveEvent(
        id=event.id,
        type=event.type,
        aggregate_type="" if parsed is None else parsed.aggregate,
        aggregate_id=event.subject,
        event="" if parsed is None else parsed.name,
        version=event.aggregate_version,
        position=event.position,
        time=event.time,
        actor=event.actor,
        correlation_id=event.correlation_id,
        data=msgspec.Raw(event.data or b"{}"),
    )
    # JSON has no raw newlines, so one data line holds the whole event.
    return b"id: %s\nevent: cloudevent\ndata: %s\n\n" % (
        event.id.encode(),
        msgspec.json.encode(live),
    )


def end_streams(app: object) -> None:
    """Called by ApiServer when it stops (before uvicorn waits on connections)."""
    ctx = getattr(getattr(app, "state", None), "api", None)
    feed = getattr(ctx, "live", None)
    if isinstance(feed, LiveFeed):
        feed.end_streams()


async def stream_endpoint(request: Request) -> Response:
    ctx = context_of(request)
    principal = await principal_of(request)
    feed = ctx.live
    if feed is None or feed.closed.is_set():
        raise ApiError(503, "no-event-stream", "this API process is not connected to the event bus")
    lines = await feed.stream(principal)
    return StreamingResponse(
        lines,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
