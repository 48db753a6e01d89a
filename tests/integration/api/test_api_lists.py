"""Lists over real HTTP: filters, cursor pagination through read models
built from the log, and the health, metrics and OpenAPI endpoints."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import msgspec
import pytest
from api_harness import Api, make_fabric, vm_body

from cloud_engine.api.cursor import query_digest
from cloud_engine.api.openapi import CHECKED_IN


async def _pages(api: Api, path: str, token: str) -> list[list[dict]]:
    pages: list[list[dict]] = []
    url = path
    while True:
        reply = await api.get(url, token=token)
        assert reply.status == 200, reply.body
        page = reply.json()
        pages.append(page["items"])
        if page["next_cursor"] is None:
            return pages
        joiner = "&" if "?" in path else "?"
        url = f"{path}{joiner}cursor={page['next_cursor']}"


async def test_pagination_through_filtered_lists(api: Api) -> None:
    fabric = await make_fabric(api)
    other_zone = (await api.post("/v1/zones", {"name": "z2"})).json()["resource_id"]
    alice_ids = []
    for n in range(7):
        reply = await api.post("/v1/vms", vm_body(fabric, f"a{n}"), token=api.alice)
        alice_ids.append(reply.json()["resource_id"])
    await asyncio.gather(
        *(api.post("/v1/vms", vm_body(fabric, f"b{n}"), token=api.bob) for n in range(3))
    )
    await api.project()

    pages = await _pages(api, f"/v1/vms?limit=3&state=Allocated&zone_id={fabric.zone}", api.alice)
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [vm["id"] for page in pages for vm in page]
    assert seen == alice_ids  # oldest first, nothing twice, nothing missed
    keys = [(vm["created_on"], vm["id"]) for page in pages for vm in page]
    assert keys == sorted(keys)

    # A filter that matches nothing, and filters on data fields.
    assert (await api.get(f"/v1/vms?zone_id={other_zone}", token=api.alice)).json() == {
        "items": [], "next_cursor": None}  # fmt: skip
    host = f"/v1/vms?host_id={uuid.uuid4()}"
    assert (await api.get(host, token=api.alice)).json()["items"] == []
    by_template = await api.get(f"/v1/vms?template_id={fabric.template}&limit=500", token=api.alice)
    assert len(by_template.json()["items"]) == 7

    # A cursor only continues the list it came from.
    first = (await api.get("/v1/vms?limit=2&state=Allocated", token=api.alice)).json()
    other = await api.get(f"/v1/vms?limit=2&cursor={first['next_cursor']}", token=api.alice)
    assert other.status == 400 and other.json()["field"] == "cursor"

    # The admin pages through one account's VMs, or everyone's.
    bobs = await _pages(api, "/v1/vms?account=bob&limit=2", api.admin)
    assert [len(p) for p in bobs] == [2, 1]
    assert {vm["account"] for page in bobs for vm in page} == {"bob"}
    everyone = await _pages(api, "/v1/vms?limit=4", api.admin)
    assert sum(len(p) for p in everyone) == 10

    # Resources owned through a parent: the volumes and operations of the deploys.
    volumes = (await api.get("/v1/volumes?limit=500", token=api.bob)).json()["items"]
    assert len(volumes) == 3 and {v["account"] for v in volumes} == {"bob"}
    operations = await api.get("/v1/operations?state=pending&kind=vm.deploy", token=api.bob)
    assert len(operations.json()["items"]) == 3
    assert (await api.get("/v1/hosts?limit=1")).json()["next_cursor"] is None


async def test_service_endpoints(api: Api) -> None:
    assert (await api.call("GET", "/livez")).json()["status"] == "ok"
    ready = await api.call("GET", "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"

    await make_fabric(api)
    await api.post("/v1/zones", {"name": 1})  # a 422 to count
    await api.project()
    metrics = (await api.call("GET", "/metrics")).body.decode()
    assert 'cloudengine_api_requests_total{method="POST",route="/v1/zones",status="202"}' in metrics
    assert 'route="/v1/zones",status="422"' in metrics
    assert "cloudengine_api_request_duration_seconds_bucket" in metrics
    assert 'cloudengine_projection_lag_events{projection="aggregates"} 0.0' in metrics
    assert "cloudengine_event_log_position" in metrics

    served = await api.call("GET", "/openapi.json")
    assert served.status == 200
    document = served.json()
    assert document["openapi"] == "3.1.0"
    assert document == json.loads(CHECKED_IN.read_text()), (
        "schemas/openapi.json is out of date: run `python -m cloud_engine.api.openapi`"
    )


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
async def test_cursor_edited_out_of_range_is_400(api: Api, stamp: str) -> None:
    raw = msgspec.json.encode([stamp, str(uuid.uuid4()), query_digest([])])
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    reply = await api.get(f"/v1/vms?cursor={cursor}", token=api.alice)
    assert reply.status == 400, reply.body
    assert reply.json()["field"] == "cursor"
