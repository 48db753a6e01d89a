"""HTTP/1.1 with keep-alive, just enough for one S3 client (the dev broker's
object store gateway, bus.broker_store)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

from cloud_engine.bus.broker_s3 import Request, Response, error

log = structlog.get_logger("bus.broker_store")

UNAVAILABLE_LOG_EVERY_S = 5.0


def parse_target(target: str) -> tuple[str, str, dict[str, str]]:
    """'/bucket/key?query' (path style, percent-encoded) -> bucket, key, query."""
    parts = urlsplit(target)
    bucket, _, key = parts.path.lstrip("/").partition("/")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return unquote(bucket), unquote(key), query


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readline()).strip():  # trailers
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readline()


class Server:
    """Each connection's requests, one after another, answered by handle.

    `unavailable`: the errors that mean the backend is gone for now (its
    database stopped or restarting): the broker retries each request, so
    one line now and then says it, not a traceback per request."""

    def __init__(
        self,
        handle: Callable[[Request], Awaitable[Response]],
        unavailable: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.handle = handle
        self.unavailable = unavailable
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._unavailable_logged = 0.0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away or spoke something else: drop it
        finally:
            self._connections.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            # The request line and headers in one read: they end with an empty line.
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial.strip():
                    return  # the client closed between requests
                raise
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for raw in lines[1:]:
                name, sep, value = raw.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader)
            else:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            bucket, key, query = parse_target(target)
            request = Request(method, bucket, key, query, headers, body)
            try:
                response = await self.handle(request)
            except self.unavailable as e:
                now = time.monotonic()
                if now - self._unavailable_logged > UNAVAILABLE_LOG_EVERY_S:
                    self._unavailable_logged = now
                    log.warning("broker store: database unavailable", error=str(e))
                response = error(503, "ServiceUnavailable", str(e))
            except Exception as e:
                # The client retries a 500; the log says what went wrong.
                log.exception("broker_store_request_failed", method=method, target=target)
                response = error(500, "InternalError", str(e))
            writer.write(response.encode(head=method == "HEAD"))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return

    async def close(self, timeout: float = 5.0) -> None:
        """End every open connection. Their tasks end by themselves on the
        closed transport (reading EOF): a cancelled one would make Python
        3.11's stream machinery print a CancelledError traceback."""
        for writer in list(self._connections):
            writer.close()
        tasks = list(self._connections.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
