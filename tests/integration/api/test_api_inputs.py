"""Inputs the OpenAPI document allows are taken and the ones it does not are
refused, over real HTTP: integers written as 2.0, empty and "null" query
values, the Idempotency-Key in quotes, and the links a 202 leads to; NUL
characters and trailing newlines refused before they reach the log (they
broke the projections or answered 500), a MAC in upper case taken."""

from __future__ import annotations

import uuid

from api_harness import PROBLEM, Api, make_fabric, vm_body


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
