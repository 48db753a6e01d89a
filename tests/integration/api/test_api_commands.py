"""Commands over real HTTP: deploy a VM and follow its operation; the
Idempotency-Key; fabric commands answering with the resource."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from api_harness import Api, created, make_fabric, new_key, vm_body


async def test_deploy_vm_answers_202_with_operation_to_poll(api: Api) -> None:
    fabric = await make_fabric(api)
    reply = await api.post("/v1/vms", vm_body(fabric, "web-1"), token=api.alice)
    assert reply.status == 202, reply.body
    accepted = reply.json()
    assert accepted["resource_type"] == "vm"
    assert accepted["replayed"] is False
    op_id, vm_id = accepted["operation_id"], accepted["resource_id"]
    assert reply.headers["location"] == f"/v1/operations/{op_id}"
    assert reply.headers["x-request-id"]

    # Polled at once: not projected yet, answered from the log.
    op = await api.get(reply.headers["location"], token=api.alice)
    assert op.status == 200, op.body
    operation = op.json()
    assert operation["type"] == "operation"
    assert operation["state"] == "pending"
    assert operation["account"] == "alice"
    assert operation["attributes"]["kind"] == "vm.deploy"
    assert operation["attributes"]["resource_id"] == vm_id
    assert [s["name"] for s in operation["attributes"]["steps"]] == ["place", "provision", "start"]

    # Once projected, the same from the read model (with its position).
    await api.project()
    op = (await api.get(f"/v1/operations/{op_id}", token=api.alice)).json()
    assert op["position"] is not None and op["state"] == "pending"
    vm = await api.get(f"/v1/vms/{vm_id}", token=api.alice)
    assert vm.status == 200
    assert vm.json()["name"] == "web-1"
    assert vm.json()["state"] == "Allocated"
    assert vm.json()["account"] == "alice"

    # Its history from the log names who asked.
    events = (await api.get(f"/v1/vms/{vm_id}/events", token=api.alice)).json()["items"]
    assert events[0]["event"] == "created"
    assert events[0]["actor"].startswith("api:alice:")
    assert events[0]["request_id"] == reply.headers["x-request-id"]


async def test_same_idempotency_key_gives_one_vm(api: Api) -> None:
    fabric = await make_fabric(api)
    key = new_key()
    body = vm_body(fabric, "once")
    first = await api.post("/v1/vms", body, token=api.alice, key=key)
    assert first.status == 202, first.body
    # Sequential retry, then concurrent retries: the same answer every time.
    again = await api.post("/v1/vms", body, token=api.alice, key=key)
    together = await asyncio.gather(
        *(api.post("/v1/vms", body, token=api.alice, key=key) for _ in range(5))
    )
    for reply in (again, *together):
        assert reply.status == 202, reply.body
        assert reply.json()["resource_id"] == first.json()["resource_id"]
        assert reply.json()["operation_id"] == first.json()["operation_id"]
        assert reply.json()["replayed"] is True
    await api.project()
    vms = (await api.get("/v1/vms?name=once", token=api.alice)).json()["items"]
    assert len(vms) == 1

    # The same key with another body is refused, naming the header.
    other = await api.post("/v1/vms", vm_body(fabric, "twice"), token=api.alice, key=key)
    assert other.status == 422
    assert other.json()["field"] == "Idempotency-Key"
    assert other.json()["type"].endswith("idempotency-key-reused")

    # Keys belong to the token: bob's same key is a new command.
    bobs = await api.post("/v1/vms", body, token=api.bob, key=key)
    assert bobs.status == 202
    assert bobs.json()["replayed"] is False
    assert bobs.json()["resource_id"] != first.json()["resource_id"]


async def test_retry_replays_even_when_the_looked_up_default_changed(api: Api) -> None:
    # A network without physical_network_id gets the zone's oldest enabled
    # one, looked up in the read model. A retry of the same request must
    # replay the first answer even if that lookup now answers differently.
    fabric = await make_fabric(api)
    second = await created(
        await api.post(
            "/v1/physical-networks",
            {
                "zone_id": fabric.zone,
                "name": "guest-2",
                "isolation": "VXLAN",
                "tag_range": {"first": 7000, "last": 7999},
            },
        )
    )
    await api.project()
    body = {"name": "net", "zone_id": fabric.zone, "cidr": "10.9.0.0/24", "isolation": "VXLAN"}
    key = new_key()
    first = await api.post("/v1/networks", body, token=api.alice, key=key)
    assert first.status == 202, first.body
    disabled = await api.post(f"/v1/physical-networks/{fabric.physical_network}/disable")
    assert disabled.status == 202, disabled.body
    await api.project()

    again = await api.post("/v1/networks", body, token=api.alice, key=key)

    assert again.status == 202, again.body
    assert again.json()["replayed"] is True
    assert again.json()["resource_id"] == first.json()["resource_id"]
    network = (await api.get(first.headers["location"], token=api.alice)).json()
    assert network["attributes"]["physical_network_id"] == fabric.physical_network
    # A new request now gets the other one; the same key with another body is refused.
    fresh = await api.post("/v1/networks", {**body, "name": "net-2"}, token=api.alice)
    assert fresh.status == 202, fresh.body
    await api.project()
    other = (await api.get(fresh.headers["location"], token=api.alice)).json()
    assert other["attributes"]["physical_network_id"] == second
    reused = await api.post("/v1/networks", {**body, "name": "x"}, token=api.alice, key=key)
    assert reused.status == 422 and reused.json()["field"] == "Idempotency-Key"


async def test_lifecycle_command_refused_by_state_is_409(api: Api) -> None:
    fabric = await make_fabric(api)
    vm_id = (await api.post("/v1/vms", vm_body(fabric), token=api.alice)).json()["resource_id"]
    # The deploy operation still holds the VM: a second operation is refused.
    stop = await api.post(f"/v1/vms/{vm_id}/stop", {"forced": True}, token=api.alice)
    assert stop.status == 409, stop.body
    problem = stop.json()
    assert stop.content_type == "application/problem+json"
    assert problem["status"] == 409 and problem["rule"]
    assert problem["detail"]


async def test_fabric_commands_answer_with_the_resource(api: Api) -> None:
    reply = await api.post("/v1/zones", {"name": "zone-a"})
    assert reply.status == 202
    zone = reply.json()
    assert zone["operation_id"] is None
    assert reply.headers["location"] == f"/v1/zones/{zone['resource_id']}"
    disabled = await api.post(f"/v1/zones/{zone['resource_id']}/disable")
    assert disabled.status == 202
    again = await api.post(f"/v1/zones/{zone['resource_id']}/disable")
    assert again.status == 409
    assert again.json()["rule"] == "invalid-transition"
    shown = await api.get(reply.headers["location"])
    assert shown.status == 200
    assert shown.json()["state"] == "Disabled"


async def test_network_defaults_its_physical_network(api: Api) -> None:
    fabric = await make_fabric(api)
    await api.project()  # the default is looked up in the read model
    reply = await api.post(
        "/v1/networks",
        {"name": "net", "zone_id": fabric.zone, "cidr": "10.9.0.0/24", "isolation": "VXLAN"},
        token=api.alice,
    )
    assert reply.status == 202, reply.body
    network = (await api.get(reply.headers["location"], token=api.alice)).json()
    assert network["attributes"]["physical_network_id"] == fabric.physical_network
    ip = await api.post("/v1/ip-addresses", {"network_id": network["id"]}, token=api.alice)
    assert ip.status == 202, ip.body
    assert ip.json()["value"].startswith("10.9.0.")
    vlan = await api.post(
        "/v1/networks",
        {"name": "n2", "zone_id": fabric.zone, "cidr": "10.8.0.0/24", "isolation": "VLAN"},
        token=api.alice,
    )
    assert vlan.status == 422
    assert vlan.json()["field"] == "physical_network_id"


async def test_history_pages_by_version(api: Api) -> None:
    # A host's history grows with every toggle (and the reconciler's findings
    # on VMs without end): it comes in pages, not one unbounded answer.
    reply = await api.post("/v1/zones", {"name": "paged"})
    zone = reply.json()["resource_id"]
    for i in range(6):
        toggled = await api.post(f"/v1/zones/{zone}/{'disable' if i % 2 == 0 else 'enable'}")
        assert toggled.status == 202, toggled.body
    path = f"/v1/zones/{zone}/events"

    everything = (await api.get(path)).json()
    assert [e["version"] for e in everything["items"]] == list(range(1, 8))
    assert everything["next_after_version"] is None

    seen: list[int] = []
    after = 0
    while True:
        page = (await api.get(f"{path}?limit=3&after_version={after}")).json()
        seen += [e["version"] for e in page["items"]]
        if page["next_after_version"] is None:
            break
        after = page["next_after_version"]
    assert seen == list(range(1, 8))
    past_the_end = (await api.get(f"{path}?after_version=7")).json()
    assert past_the_end == {"items": [], "next_after_version": None}
    for bad in ("limit=0", "limit=501", "after_version=-1", "after_version=x", "since=1"):
        refused = await api.get(f"{path}?{bad}")
        assert refused.status == 400, (bad, refused.body)
        assert refused.content_type == "application/problem+json"


async def test_commands_beyond_the_pending_limit_are_refused_at_once(api: Api) -> None:
    # The writer is stuck (here: its first commit waits on a gate); the API
    # answers 503 with Retry-After instead of queueing without end, records
    # nothing for the refused command, and takes commands again once the
    # writer answered.
    context = api.server.server.config.app.state.api  # the running app's ApiContext
    context.max_pending = 1
    gate = threading.Event()
    real = api.store.append

    def held(*args: Any, **kwargs: Any) -> list[int]:
        gate.wait(30)
        return real(*args, **kwargs)

    api.store.append = held  # type: ignore[method-assign]
    first = asyncio.create_task(api.post("/v1/zones", {"name": "first"}))
    deadline = time.monotonic() + 10
    while context.pending < 1:
        assert time.monotonic() < deadline, "the first command never reached the writer"
        await asyncio.sleep(0.01)

    refused = await api.post("/v1/zones", {"name": "second"})

    assert refused.status == 503, refused.body
    assert refused.headers["retry-after"] == "1"
    assert refused.content_type == "application/problem+json"
    gate.set()
    assert (await first).status == 202
    api.store.append = real  # type: ignore[method-assign]
    assert context.pending == 0
    third = await api.post("/v1/zones", {"name": "third"})
    assert third.status == 202, third.body
    await api.project()
    names = {z["name"] for z in (await api.get("/v1/zones")).json()["items"]}
    assert names == {"first", "third"}
