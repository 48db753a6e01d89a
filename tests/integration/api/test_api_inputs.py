"""Inputs the OpenAPI document allows are taken and the ones it does not are
refused, over real HTTP: integers written as 2.0, empty and "null" query
values, the Idempotency-Key in quotes, and the links a 202 leads to."""

from __future__ import annotations

import uuid

from api_harness import Api, make_fabric


async def test_an_integral_number_is_taken_for_an_integer(api: Api) -> None:
    fabric = await make_fabric(api)
    body = {"name": "data", "zone_id": fabric.zone, "size_gb": 2.0}
    created = await api.post("/v1/volumes", body, token=api.alice)
    assert created.status == 202, created.body
    volume = await api.get(f"/v1/volumes/{created.json()['resource_id']}", token=api.alice)
    assert volume.json()["attributes"]["size_bytes"] == 2 << 30
    for size, detail in [(2.5, "got `float`"), ("2", "got `str`"), (0.0, ">= 1")]:
        refused = await api.post("/v1/volumes", {**body, "size_gb": size}, token=api.alice)
        assert refused.status == 422, (size, refused.body)
        assert refused.json()["field"] == "size_gb" and detail in refused.json()["detail"]


async def test_query_values_are_read_as_the_document_says(api: Api) -> None:
    for query, field in [
        ("state=", "state"),
        ("cursor=", "cursor"),
        ("limit=", "limit"),
        ("zone_id=", "zone_id"),
        # msgspec's lax mode read "null" as no value: every VM, not an error.
        ("zone_id=null", "zone_id"),
        ("limit=2.5", "limit"),
    ]:
        reply = await api.get(f"/v1/vms?{query}")
        assert reply.status == 400, (query, reply.body)
        assert reply.json()["field"] == field, query
    empty = await api.get("/v1/vms?state=")
    assert "is empty" in empty.json()["detail"]
    # Unknown stays unknown, even when empty.
    unknown = await api.get("/v1/vms?colour=")
    assert unknown.status == 400 and unknown.json()["field"] == "colour"
    for query in ["limit=5", "limit=5.0", "state=null", f"zone_id={uuid.uuid4()}"]:
        reply = await api.get(f"/v1/vms?{query}")
        assert reply.status == 200, (query, reply.body)
    events = await api.get(f"/v1/vms/{uuid.uuid4()}/events?after_version=")
    assert events.status in (400, 404)


async def test_a_quoted_idempotency_key_is_the_key_inside(api: Api) -> None:
    first = await api.post("/v1/zones", {"name": "z"}, key='"zone-1"')
    again = await api.post("/v1/zones", {"name": "z"}, key="zone-1")
    assert first.status == again.status == 202, (first.body, again.body)
    assert again.json()["replayed"] is True
    assert again.json()["resource_id"] == first.json()["resource_id"]
    empty = await api.post("/v1/zones", {"name": "z"}, key='""')
    assert empty.status == 400 and empty.json()["field"] == "Idempotency-Key"


async def test_the_links_of_a_202_lead_somewhere(api: Api) -> None:
    fabric = await make_fabric(api)
    document = (await api.get("/openapi.json")).json()
    deploy = await api.post(
        "/v1/vms",
        {
            "name": "vm",
            "zone_id": fabric.zone,
            "template_id": fabric.template,
            "spec": {"cpus": 1, "ram_mb": 256, "root_disk_gb": 1},
        },
        token=api.alice,
    )
    assert deploy.status == 202, deploy.body
    answer = deploy.json()
    links = document["paths"]["/v1/vms"]["post"]["responses"]["202"]["links"]
    paths = {
        operation["operationId"]: path
        for path, item in document["paths"].items()
        for operation in item.values()
        if "operationId" in operation
    }
    for name in ("operation", "resource", "resourceEvents"):
        link = links[name]
        pointer = link["parameters"]["id"].removeprefix("$response.body#/")
        path = paths[link["operationId"]].replace("{id}", str(answer[pointer]))
        reply = await api.get(path, token=api.alice)
        assert reply.status == 200, (name, path, reply.body)
    assert deploy.headers["location"] == f"/v1/operations/{answer['operation_id']}"
