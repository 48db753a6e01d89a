"""The VM as a user sees it: its NICs with their addresses and its volumes
inside the VM's own resource, from the read models and, before they caught
up, from the log."""

from __future__ import annotations

import uuid

from api_harness import Api, make_fabric, vm_body

from cloud_engine.engine.commands import CommandContext
from cloud_engine.engine.commands.network import ReleaseNic
from cloud_engine.infra.pg import connect


async def _vm_with_nics(api: Api) -> tuple[str, str, list[dict]]:
    fabric = await make_fabric(api)
    net = await api.post(
        "/v1/networks",
        {"name": "n", "zone_id": fabric.zone, "cidr": "10.7.0.0/24", "isolation": "none"},
        token=api.alice,
    )
    network = net.json()["resource_id"]
    vm = (await api.post("/v1/vms", vm_body(fabric), token=api.alice)).json()["resource_id"]
    nics = []
    for device in (0, 1):
        ip = await api.post(
            "/v1/ip-addresses", {"network_id": network, "owner_id": vm}, token=api.alice
        )
        assert ip.status == 202, ip.body
        body = {
            "vm_id": vm,
            "network_id": network,
            "device_id": device,
            "ip_address_id": ip.json()["resource_id"],
        }
        reply = await api.post("/v1/nics", body, token=api.alice)
        assert reply.status == 202, reply.body
        nics.append(reply.json())
    return vm, network, nics


async def test_vm_shows_its_nics_addresses_and_volumes(api: Api) -> None:
    vm, network, created = await _vm_with_nics(api)
    await api.project()

    one = (await api.get(f"/v1/vms/{vm}", token=api.alice)).json()
    nics = one["attributes"]["nics"]
    assert [n["id"] for n in nics] == [c["resource_id"] for c in created]
    assert [n["device_id"] for n in nics] == [0, 1]
    assert {n["network_id"] for n in nics} == {network}
    for nic in nics:
        # The address and MAC the NIC was given, as its own resource says.
        own = (await api.get(f"/v1/nics/{nic['id']}", token=api.alice)).json()
        assert nic["address"] == own["attributes"]["address"]
        assert nic["address"].startswith("10.7.0.")
        assert nic["mac"] == own["attributes"]["mac"]
        assert set(nic) == {"id", "network_id", "mac", "address", "device_id"}
    # No engine runs here, so the deploy made no root volume yet
    # (test_api_lifecycle shows a deployed VM's).
    assert one["attributes"]["volumes"] == []
    # No flag that contradicts the state (the Allocated sub-state "placed").
    assert "placed" not in one["attributes"]

    # The list shows the same VM the same way.
    listed = (await api.get("/v1/vms", token=api.alice)).json()["items"]
    assert [v["attributes"]["nics"] for v in listed if v["id"] == vm] == [nics]

    # A released NIC is gone from the VM.
    context = CommandContext(actor="test", request_id="t")
    api.service.execute(ReleaseNic(nic_id=uuid.UUID(nics[1]["id"])), context)
    await api.project()
    after = (await api.get(f"/v1/vms/{vm}", token=api.alice)).json()["attributes"]["nics"]
    assert [n["id"] for n in after] == [nics[0]["id"]]


async def test_vm_read_from_the_log_shows_projected_nics(api: Api) -> None:
    vm, _network, created = await _vm_with_nics(api)
    await api.project()
    # A VM newer than its row: the row is removed, as if the projection had
    # not reached it yet; the NICs' rows are there.
    conn = await connect(api.target)
    try:
        await conn.execute(f'DELETE FROM "{api.target.schema}".rm_vm WHERE id = $1', uuid.UUID(vm))
    finally:
        await conn.close()
    one = (await api.get(f"/v1/vms/{vm}", token=api.alice)).json()
    assert one["position"] is None  # from the log
    assert [n["id"] for n in one["attributes"]["nics"]] == [c["resource_id"] for c in created]
