"""Regressions found reviewing api/: inputs that used to answer 500 (or be
recorded and then break the projections), an ACL gap on untyped refs, and
the plumbing of the 500 answer itself."""

from __future__ import annotations

import asyncio
import base64
import socket
import uuid
from concurrent.futures import Future

import eventsourcing.persistence
import msgspec
import psycopg
import pytest
from api_harness import Api, make_fabric, vm_body

from cloud_engine.api.cursor import query_digest

PROBLEM = "application/problem+json"


async def test_nul_in_strings_is_refused_before_it_reaches_the_log(api: Api) -> None:
    fabric = await make_fabric(api)
    refused = [
        (await api.post("/v1/zones", {"name": "a\u0000b"}), "name"),
        (await api.post("/v1/zones", {"name": "z", "description": "\u0000"}), "description"),
        (
            await api.post("/v1/vms", vm_body(fabric, affinity_group="g\u0000"), token=api.alice),
            "affinity_group",
        ),
        (
            await api.post(
                "/v1/vms",
                vm_body(fabric, spec={"cpus": 1, "ram_mb": 256, "root_disk_gb": 1,
                                      "tags": ["\u0000"]}),
                token=api.alice,
            ),
            "spec.tags[0]",
        ),
    ]  # fmt: skip
    for reply, field in refused:
        assert reply.status == 422, reply.body
        assert reply.content_type == PROBLEM
        assert reply.json()["field"] == field
    # Nothing of it was recorded: the projections still rebuild.
    await api.project()
    assert (await api.get("/v1/zones")).status == 200
    # In a text filter PostgreSQL would refuse it: a 400, not a 500.
    for path in ("/v1/zones?name=a%00", "/v1/vms?state=%00", "/v1/operations?kind=x%00"):
        reply = await api.get(path, token=api.alice)
        assert reply.status == 400, (path, reply.body)
        assert reply.json()["type"].endswith(":invalid-query")


async def test_patterns_do_not_accept_a_trailing_newline(api: Api) -> None:
    fabric = await make_fabric(api)
    other = await api.post("/v1/vms", vm_body(fabric, account="alice\n"))
    assert other.status == 422 and other.json()["field"] == "account"
    net = {"name": "n", "zone_id": fabric.zone, "isolation": "none"}
    reply = await api.post("/v1/networks", {**net, "cidr": "10.1.0.0/24\n"}, token=api.alice)
    assert reply.status == 422 and reply.json()["field"] == "cidr"
    made = await api.post("/v1/networks", {**net, "cidr": "10.1.0.0/24"}, token=api.alice)
    assert made.status == 202
    net_id = made.json()["resource_id"]
    reply = await api.post(
        "/v1/ip-addresses", {"network_id": net_id, "address": "10.1.0.9\n"}, token=api.alice
    )
    assert reply.status == 422 and reply.json()["field"] == "address"


async def test_upper_case_mac_is_taken_as_the_contract_says(api: Api) -> None:
    fabric = await make_fabric(api)
    net = await api.post(
        "/v1/networks",
        {"name": "n", "zone_id": fabric.zone, "cidr": "10.3.0.0/24", "isolation": "none"},
        token=api.alice,
    )
    vm = await api.post("/v1/vms", vm_body(fabric), token=api.alice)
    body = {
        "vm_id": vm.json()["resource_id"],
        "network_id": net.json()["resource_id"],
        "device_id": 1,
        "mac": "02:AB:CD:EF:00:01",
    }
    nic = await api.post("/v1/nics", body, token=api.alice)
    assert nic.status == 202, nic.body
    assert nic.json()["value"] == "02:ab:cd:ef:00:01"
    bad = await api.post("/v1/nics", {**body, "mac": "02:ab:cd:ef:00:02\n"}, token=api.alice)
    assert bad.status == 422 and bad.json()["field"] == "mac"


async def test_untyped_ref_cannot_name_a_fabric_resource_for_a_user(api: Api) -> None:
    fabric = await make_fabric(api)
    net = await api.post(
        "/v1/networks",
        {"name": "n", "zone_id": fabric.zone, "cidr": "10.4.0.0/24", "isolation": "none"},
        token=api.alice,
    )
    net_id = net.json()["resource_id"]
    on_host = {"network_id": net_id, "owner_id": fabric.hosts[0]}
    on_nothing = {"network_id": net_id, "owner_id": str(uuid.uuid4())}
    host = await api.post("/v1/ip-addresses", on_host, token=api.alice)
    absent = await api.post("/v1/ip-addresses", on_nothing, token=api.alice)
    # Exactly like an id that does not exist: the user learns nothing of hosts.
    assert (host.status, absent.status) == (404, 404)
    assert host.json()["field"] == absent.json()["field"] == "owner_id"
    assert host.json()["detail"].replace(fabric.hosts[0], "?") == absent.json()["detail"].replace(
        on_nothing["owner_id"], "?"
    )
    # The user's own VM is a fine owner; an admin may name anything.
    vm = await api.post("/v1/vms", vm_body(fabric), token=api.alice)
    mine = {"network_id": net_id, "owner_id": vm.json()["resource_id"]}
    assert (await api.post("/v1/ip-addresses", mine, token=api.alice)).status == 202
    assert (await api.post("/v1/ip-addresses", on_host)).status == 202


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
async def test_cursor_edited_out_of_range_is_400(api: Api, stamp: str) -> None:
    raw = msgspec.json.encode([stamp, str(uuid.uuid4()), query_digest([])])
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    reply = await api.get(f"/v1/vms?cursor={cursor}", token=api.alice)
    assert reply.status == 400, reply.body
    assert reply.json()["field"] == "cursor"


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
