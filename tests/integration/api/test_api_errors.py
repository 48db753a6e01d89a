"""What the API answers when something goes wrong on its side or on the
wire, over real HTTP: a bug is a 500 problem document with the request id
and no detail, the event store down is a 503 with Retry-After (never a 500
a client would not retry), a client gone mid-body is no 500, and methods
the API does not have share one metric series."""

from __future__ import annotations

import asyncio
import socket
import uuid
from concurrent.futures import Future

import eventsourcing.persistence
import psycopg
import pytest
from api_harness import PROBLEM, Api


async def test_a_500_carries_its_request_id(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_aggregate_id: uuid.UUID) -> None:
        raise RuntimeError("a bug")

    # A resource the read model does not have is read from the log.
    monkeypatch.setattr(api.store, "load", broken)
    reply = await api.call(
        "GET", f"/v1/vms/{uuid.uuid4()}", token=api.admin, headers={"X-Request-Id": "trace-500"}
    )
    assert reply.status == 500
    assert reply.content_type == PROBLEM
    assert reply.headers["x-request-id"] == "trace-500"
    assert reply.json()["request_id"] == "trace-500"
    assert "a bug" not in reply.body.decode()


async def test_event_store_down_on_a_read_is_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(_aggregate_id: uuid.UUID) -> None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(api.store, "load", down)
    reply = await api.get(f"/v1/vms/{uuid.uuid4()}")
    assert reply.status == 503, reply.body
    assert reply.headers["retry-after"] == "1"


def _send_and_close(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


async def _metric_lines(api: Api) -> list[str]:
    text = (await api.call("GET", "/metrics")).body.decode()
    return [line for line in text.splitlines() if line.startswith("cloudengine_api_requests_total")]


async def test_client_gone_mid_body_is_no_500(api: Api) -> None:
    head = (
        f"POST /v1/zones HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.admin}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    await asyncio.to_thread(_send_and_close, api.port, head.encode() + b'{"name":')
    for _ in range(100):
        lines = await _metric_lines(api)
        if any('route="/v1/zones"' in line for line in lines):
            break
        await asyncio.sleep(0.05)
    assert not [line for line in lines if 'status="500"' in line], lines


async def test_made_up_methods_share_one_metric_series(api: Api) -> None:
    for verb in ("FOO", "BAR", "BAZ"):
        request = f"{verb} /v1/vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await asyncio.to_thread(_exchange, api.port, request.encode())
        assert answer.startswith(b"HTTP/1.1 405")
    lines = await _metric_lines(api)
    assert not [line for line in lines if "FOO" in line or "BAR" in line], lines
    assert any('method="other"' in line and 'status="405"' in line for line in lines), lines


async def test_metrics_show_the_command_writer(api: Api) -> None:
    before = await _writer_count(api)
    reply = await api.post("/v1/zones", {"name": "metered"})
    assert reply.status == 202, reply.body
    text = (await api.call("GET", "/metrics")).body.decode()
    assert await _writer_count(api) >= before + 1
    assert "cloudengine_writer_wait_seconds_count" in text
    assert "cloudengine_writer_batch_seconds_count" in text


async def _writer_count(api: Api) -> float:
    text = (await api.call("GET", "/metrics")).body.decode()
    for line in text.splitlines():
        if line.startswith("cloudengine_writer_batch_commands_sum "):
            return float(line.split()[1])
    raise AssertionError("no cloudengine_writer_batch_commands_sum in /metrics")


def _failing_submit(error: Exception) -> object:
    def submit(_command: object, _context: object = None) -> Future[object]:
        future: Future[object] = Future()
        future.set_exception(error)
        return future

    return submit


async def test_an_engine_bug_is_a_500_not_a_retry(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.service, "submit", _failing_submit(RuntimeError("internal detail")))
    reply = await api.post("/v1/zones", {"name": "z"})
    assert reply.status == 500, reply.body
    assert "internal detail" not in reply.body.decode()
    assert "retry-after" not in reply.headers


async def test_event_store_down_on_a_command_is_503(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = eventsourcing.persistence.OperationalError("connection refused")
    monkeypatch.setattr(api.service, "submit", _failing_submit(down))
    reply = await api.post("/v1/zones", {"name": "z"})
    assert reply.status == 503, reply.body
    assert reply.headers["retry-after"] == "1"
