"""The ACL over real HTTP: no or bad token 401, a user on the fabric 403,
another account's resource 404 (exactly like a missing one, also when an
untyped reference names a fabric resource), admin sees all."""

from __future__ import annotations

import uuid

import pytest
from api_harness import Api, make_fabric, vm_body


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YWxhZGRpbjpvcGVu"},
     {"Authorization": "Bearer ce_" + "x" * 43}, {"Authorization": "Bearer"}],
)  # fmt: skip
async def test_no_or_invalid_token_is_401(api: Api, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/vms"), ("POST", "/v1/zones"), ("GET", "/v1/zones")]:
        reply = await api.call(method, path, headers=headers, body={"name": "z"})
        assert reply.status == 401, (path, reply.body)
        assert reply.content_type == "application/problem+json"
        assert reply.headers["www-authenticate"] == "Bearer"


async def test_user_on_fabric_endpoints_is_403(api: Api) -> None:
    fabric = await make_fabric(api)
    refused = [
        await api.post("/v1/zones", {"name": "mine"}, token=api.alice),
        await api.post(f"/v1/hosts/{fabric.hosts[0]}/disable", token=api.alice),
        await api.post("/v1/templates", {"name": "t"}, token=api.alice),
        await api.get("/v1/hosts", token=api.alice),
        await api.get(f"/v1/hosts/{fabric.hosts[0]}", token=api.alice),
        await api.get(f"/v1/storage-pools/{fabric.pool}/events", token=api.alice),
    ]
    for reply in refused:
        assert reply.status == 403, reply.body
        assert reply.json()["type"].endswith(":forbidden")
    # The catalog (zones, templates) is readable by users.
    assert (await api.get(f"/v1/zones/{fabric.zone}", token=api.alice)).status == 200
    assert (await api.get(f"/v1/templates/{fabric.template}", token=api.alice)).status == 200
    # Steering the fabric from a tenant body is for admins too.
    pinned = await api.post("/v1/vms", vm_body(fabric, host_id=fabric.hosts[0]), token=api.alice)
    assert pinned.status == 403 and pinned.json()["field"] == "host_id"


async def test_other_accounts_resources_are_404(api: Api) -> None:
    fabric = await make_fabric(api)
    deployed = (await api.post("/v1/vms", vm_body(fabric, "alices"), token=api.alice)).json()
    vm_id, op_id = deployed["resource_id"], deployed["operation_id"]
    net = await api.post(
        "/v1/networks",
        {"name": "n", "zone_id": fabric.zone, "cidr": "10.2.0.0/24", "isolation": "none"},
        token=api.alice,
    )
    net_id = net.json()["resource_id"]
    missing = str(uuid.uuid4())

    async def both(method: str, path: str, body: object = None) -> tuple[int, int]:
        theirs = await api.call(method, path.format(id=vm_id), token=api.bob, body=body)
        absent = await api.call(method, path.format(id=missing), token=api.bob, body=body)
        assert theirs.json()["type"] == absent.json()["type"]
        return theirs.status, absent.status

    assert await both("GET", "/v1/vms/{id}") == (404, 404)
    assert await both("GET", "/v1/vms/{id}/events") == (404, 404)
    assert await both("POST", "/v1/vms/{id}/destroy") == (404, 404)
    assert (await api.get(f"/v1/operations/{op_id}", token=api.bob)).status == 404
    # Naming alice's network in bob's request: 404 naming the field.
    nic = await api.post("/v1/ip-addresses", {"network_id": net_id}, token=api.bob)
    assert nic.status == 404 and nic.json()["field"] == "network_id"
    deploy = await api.post("/v1/vms", vm_body(fabric, network_ids=[net_id]), token=api.bob)
    assert deploy.status == 404 and deploy.json()["field"] == "network_ids[0]"
    # Acting for another account is refused outright.
    other = await api.post("/v1/vms", vm_body(fabric, account="alice"), token=api.bob)
    assert other.status == 403 and other.json()["field"] == "account"

    await api.project()
    assert (await api.get("/v1/vms", token=api.bob)).json()["items"] == []
    assert (await api.get("/v1/vms?account=alice", token=api.bob)).json()["items"] == []
    assert (await api.get("/v1/operations", token=api.bob)).json()["items"] == []
    alices = (await api.get("/v1/vms", token=api.alice)).json()["items"]
    assert [v["id"] for v in alices] == [vm_id]


async def test_admin_sees_and_acts_for_every_account(api: Api) -> None:
    fabric = await make_fabric(api)
    for token in (api.alice, api.bob):
        assert (await api.post("/v1/vms", vm_body(fabric), token=token)).status == 202
    made = await api.post("/v1/vms", vm_body(fabric, account="carol"))
    assert made.status == 202
    await api.project()
    everyone = (await api.get("/v1/vms")).json()["items"]
    assert sorted(v["account"] for v in everyone) == ["alice", "bob", "carol"]
    carols = (await api.get("/v1/vms?account=carol")).json()["items"]
    assert [v["id"] for v in carols] == [made.json()["resource_id"]]
    shown = await api.get(f"/v1/vms/{carols[0]['id']}/events")
    assert shown.status == 200
    nics = await api.get("/v1/nics")
    assert nics.status == 200


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
