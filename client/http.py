"""HTTP/1.1 to the API on a plain socket.

Not http.client: it imports the email package to parse headers (~40 ms of
the CLI's start-up, whose target is 150 ms to its first request). The API
is ours (uvicorn): a status line, headers, and a Content-Length or chunked
body. One connection per command, kept alive across its requests (a --wait
polls on it); ssl is imported only for an https URL.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import quote, urlsplit

from cloud_engine.client.config import Profile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Exit codes a script can rely on (docs/cli.md).
OK = 0
REFUSED = 1  # the API answered with a problem document (4xx), or refused the token
USAGE = 2  # bad arguments (argparse's own code)
UNREACHABLE = 3  # no answer: connection refused, timeout, 502/503/504
OPERATION_FAILED = 4  # the command was accepted but its operation failed

TIMEOUT_S = 35.0  # the API answers a command within 30 s or says 503
MAX_BODY = 64 << 20


class ClientError(Exception):
    def __init__(self, message: str, code: int, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.problem = problem


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Closed(Exception):
    """The server closed a kept-alive connection before answering."""


class Client:
    def __init__(self, profile: Profile, *, timeout: float = TIMEOUT_S) -> None:
        parts = urlsplit(profile.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{profile.url!r} is not an http(s) URL", USAGE)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._host_header = parts.netloc.rpartition("@")[2]
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        self._token = profile.token
        self._sock: Any = None
        self._buffer = b""
        self.url = profile.url

    def _connect(self) -> Any:
        if self._sock is None:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
            self._sock = sock
            self._buffer = b""
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: bool = True,
    ) -> Reply:
        target = quote(self._base + path, safe="/:@!$&'()*+,;=-._~")
        if query:
            target += "?" + "&".join(
                f"{quote(str(k), safe='')}={quote(str(v), safe='')}"
                for k, v in query.items()
                if v is not None
            )
        sent = {
            "Host": self._host_header,
            "Accept": "application/json",
            "User-Agent": "cloud-engine-cli",
        }
        if token and self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        data = b""
        if body is not None or method == "POST":
            data = json.dumps({} if body is None else body).encode()
            sent["Content-Type"] = "application/json"
        sent["Content-Length"] = str(len(data))
        sent.update(headers or {})
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
        message = head.encode("latin-1") + b"\r\n" + data
        for attempt in (1, 2):
            fresh = self._sock is None
            try:
                self._connect().sendall(message)
                status, received, raw = self._response()
                break
            except _Closed:
                # A kept-alive connection the server closed meanwhile: once more
                # on a new one (commands carry an Idempotency-Key, so a retry of
                # one that did arrive is answered, not repeated).
                self.close()
                if fresh or attempt == 2:
                    raise ClientError(f"{self.url}: connection closed", UNREACHABLE) from None
            except (OSError, ValueError) as e:
                self.close()
                raise ClientError(f"{self.url} is unreachable: {e}", UNREACHABLE) from None
        if received.get("connection", "").lower() == "close":
            self.close()
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
        reply = Reply(status, received, payload)
        if status >= 400:
            raise _problem(reply)
        return reply

    def _read(self) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise _Closed
        return bytes(chunk)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            if len(self._buffer) > MAX_BODY:
                raise ValueError("response too large")
            self._buffer += self._read()
        line, _, self._buffer = self._buffer.partition(marker)
        return line

    def _exactly(self, size: int) -> bytes:
        if size > MAX_BODY:
            raise ValueError("response too large")
        while len(self._buffer) < size:
            self._buffer += self._read()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _response(self) -> tuple[int, dict[str, str], bytes]:
        while True:
            head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
            version, status_text, *_ = [*head[0].split(" ", 2), ""]
            if not version.startswith("HTTP/1."):
                raise ValueError(f"not an HTTP response: {head[0][:80]!r}")
            status = int(status_text)
            received: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                received[name.strip().lower()] = value.strip()
            if status >= 200:
                break  # (1xx: an interim answer; the real one follows)
        if received.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                body += self._exactly(size)
                self._exactly(2)
        elif "content-length" in received:
            body = self._exactly(int(received["content-length"]))
        elif received.get("connection", "").lower() == "close" and status not in (204, 304):
            body = self._buffer
            try:
                while len(body) <= MAX_BODY:
                    body += self._read()
            except _Closed:
                pass
            self._buffer = b""
        else:
            body = b""
        return status, received, body


def _problem(reply: Reply) -> ClientError:
    body = reply.body if isinstance(reply.body, dict) else {}
    title = body.get("title") or f"HTTP {reply.status}"
    detail = body.get("detail") or (reply.body if isinstance(reply.body, str) else "")
    message = f"{title}: {detail}" if detail else str(title)
    if body.get("field"):
        message += f" (field {body['field']})"
    if reply.status == 401:
        message += "; log in again: cloud-engine login URL"
    code = UNREACHABLE if reply.status in (502, 503, 504) else REFUSED
    if reply.status >= 500 and reply.status not in (502, 503, 504):
        code = REFUSED
    return ClientError(message, code, body or None)
