"""One request to the HTTP API over urllib, as the admin: a bearer token,
a JSON body, an Idempotency-Key when given. The benches' clients
(chaos_load.py, soak.py) and the `up` tests (tests/integration/test_cli.py)
send theirs through it; the CLI has its own (client/http.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def send(
    method: str,
    url: str,
    token: str,
    body: Any = None,
    *,
    key: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """The answer's status and body, an error status's (4xx, 5xx) too. No
    whole answer (refused, reset, cut short) raises OSError or
    http.client.HTTPException (IncompleteRead is not an OSError)."""
    request = urllib.request.Request(url, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if key is not None:
        request.add_header("Idempotency-Key", key)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def call(
    method: str, url: str, token: str, body: Any = None, *, timeout: float = 30.0
) -> tuple[int, Any]:
    """send(), its body read as JSON (an empty one as {})."""
    status, raw = send(method, url, token, body, timeout=timeout)
    return status, json.loads(raw or b"{}")
