"""The S3 protocol as Tansu's object store client (the Rust object_store
crate) speaks it, over a storage backend (bus.broker_backend).

Only what that client sends is served: PUT (plain, If-None-Match: * to
create, If-Match to update: Tansu's optimistic concurrency on its metadata),
GET and HEAD (conditional, ranged), DELETE, bulk delete, copy, and
ListObjectsV2. No signatures are checked: the gateway listens on 127.0.0.1
only and the broker runs with AWS_SKIP_SIGNATURE. The HTTP/1.1 server is in
bus.broker_http.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import structlog

from cloud_engine.bus.broker_backend import Backend, NoSuchKey, PreconditionFailed

log = structlog.get_logger("bus.broker_store")

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


def quoted(etag: str) -> str:
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


def iso(moment: datetime) -> str:
    """A listing's LastModified, to the microsecond (Tansu picks a
    partition's earliest and latest batch by it)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


class S3:
    """The S3 operations, on a backend."""

    def __init__(self, backend: Backend, *, log_requests: bool = False) -> None:
        self.backend = backend
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
            if method in ("PUT", "HEAD"):  # create / probe a bucket: buckets need no creating
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
            await self.backend.delete(request.bucket, [request.key])
            return Response(204)
        return error(405, "MethodNotAllowed", method)

    async def put(self, request: Request) -> Response:
        headers = request.headers
        if_match = headers.get("if-match")
        try:
            etag = await self.backend.put(
                request.bucket,
                request.key,
                request.body,
                headers.get("content-type"),
                create=headers.get("if-none-match", "").strip() == "*",
                match=None if if_match is None else if_match.strip().removeprefix("W/").strip('"'),
            )
        except PreconditionFailed:
            return error(412, "PreconditionFailed", request.key)
        except NoSuchKey:
            return error(404, "NoSuchKey", request.key)
        return Response(200, headers={"ETag": quoted(etag)})

    async def copy(self, request: Request) -> Response:
        source = unquote(request.headers["x-amz-copy-source"]).lstrip("/")
        bucket, _, key = source.partition("/")
        etag = await self.backend.copy((bucket, key), request.bucket, request.key)
        if etag is None:
            return error(404, "NoSuchKey", source)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<CopyObjectResult><LastModified>{iso(datetime.now(UTC))}</LastModified>"
            f"<ETag>{escape(quoted(etag))}</ETag></CopyObjectResult>"
        ).encode()
        return Response(200, body, {"Content-Type": "application/xml"})

    async def get(self, request: Request) -> Response:
        headers = request.headers
        if_none_match = headers.get("if-none-match")
        head = request.method == "HEAD"
        found = await self.backend.get(request.bucket, request.key, head=head)
        if found is None:
            return error(404, "NoSuchKey", request.key)
        etag, modified = found.etag, found.modified
        meta = {
            "ETag": quoted(etag),
            "Last-Modified": _http_date(modified),
            "Content-Type": found.content_type or "application/octet-stream",
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
        size, body = found.size, found.body
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
        await self.backend.delete(request.bucket, keys)
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
        after = max(query.get("start-after", ""), query.get("continuation-token", ""))
        prefixes: list[str] = []
        if delimiter:
            contents: list[str] = []
            for entry in await self.backend.list_entries(request.bucket, prefix, after):
                cut = entry.key.find(delimiter, len(prefix))
                if cut >= 0:  # below a "folder": listed as the folder
                    common = entry.key[: cut + len(delimiter)]
                    if not prefixes or prefixes[-1] != common:
                        prefixes.append(common)
                    continue
                contents.append(
                    f"<Contents><Key>{escape(entry.key)}</Key>"
                    f"<LastModified>{iso(entry.modified)}</LastModified>"
                    f"<ETag>{escape(quoted(entry.etag))}</ETag>"
                    f"<Size>{entry.size}</Size></Contents>"
                )
            count, xml = len(contents), "".join(contents)
        else:
            count, xml = await self.backend.list_xml(request.bucket, prefix, after)
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
