"""Public IPs and network rules over real HTTP: the zone's public network
(admins only), an isolated network that gets a router through it by
default, public IPs taken by users from a network that is not theirs, and
bad rules refused with the field to blame."""

from __future__ import annotations

from typing import Any

from api_harness import Api, created, make_fabric, vm_body


async def test_public_ips_and_rule_refusals(api: Api) -> None:
    fabric = await make_fabric(api)
    public_body = {
        "name": "public", "zone_id": fabric.zone, "cidr": "100.64.3.0/24",
        "gateway": "100.64.3.1", "isolation": "none", "purpose": "public",
    }  # fmt: skip
    # Users may not make the zone's public network.
    refused = await api.post("/v1/networks", public_body, token=api.alice)
    assert refused.status == 403 and refused.json()["field"] == "purpose", refused.body
    public = await created(await api.post("/v1/networks", public_body))

    # An isolated network gets a router through the zone's public network
    # (named here: the default is read from the read models, which may lag).
    body = {
        "name": "web", "zone_id": fabric.zone, "cidr": "10.5.0.0/24", "isolation": "VXLAN",
        "physical_network_id": fabric.physical_networks[0], "public_network_id": public,
    }  # fmt: skip
    network = await created(await api.post("/v1/networks", body, token=api.alice))
    seen = await api.get(f"/v1/networks/{network}", token=api.alice)
    attributes = seen.json()["attributes"]
    assert attributes["router_address"] == "10.5.0.254"
    assert attributes["source_nat_ip"] == "100.64.3.2"

    # A public IP: alice's, though the public network is the admin's.
    ip = await api.post("/v1/ip-addresses", {"network_id": public}, token=api.alice)
    public_ip = await created(ip)
    assert ip.json()["value"] == "100.64.3.3"
    mine = await api.get(f"/v1/ip-addresses/{public_ip}", token=api.alice)
    assert mine.status == 200 and mine.json()["attributes"]["account"] == "alice"
    theirs = await api.get(f"/v1/ip-addresses/{public_ip}", token=api.bob)
    assert theirs.status == 404
    bobs = await created(await api.post("/v1/ip-addresses", {"network_id": public}, token=api.bob))
    # Bob cannot name alice's network, nor use its network as if public.
    other = await api.post("/v1/ip-addresses", {"network_id": network}, token=api.bob)
    assert other.status == 404 and other.json()["field"] == "network_id"

    rule: dict[str, Any] = {
        "network_id": network, "kind": "port_forwarding", "protocol": "tcp",
        "start_port": 8080, "public_ip_address_id": public_ip, "private_ip": "10.5.0.5",
        "private_port": 80,
    }  # fmt: skip
    ok = await api.post("/v1/network-rules", rule, token=api.alice)
    rule_id = await created(ok)
    shown = await api.get(f"/v1/network-rules/{rule_id}", token=api.alice)
    assert shown.json()["state"] == "Adding"
    assert shown.json()["attributes"]["private_end_port"] == 80
    for change, status, field in [
        ({"private_ip": "10.6.0.5"}, 422, "private_ip"),
        ({"private_ip": "10.5.0.254"}, 422, "private_ip"),
        ({"end_port": 8081, "private_end_port": 80}, 422, "private_end_port"),
        ({"end_port": 8300}, 422, "end_port"),
        ({"private_port": 0}, 422, "private_port"),
        ({"protocol": "icmp"}, 422, "start_port"),
        ({"public_ip_address_id": None}, 422, "public_ip_id"),
        ({"kind": "static_nat", "protocol": "all", "start_port": None, "private_port": None,
          "public_ip_address_id": bobs}, 404, "public_ip_address_id"),
    ]:  # fmt: skip
        reply = await api.post("/v1/network-rules", {**rule, **change}, token=api.alice)
        assert reply.status == status, (change, reply.body)
        assert reply.json()["field"] == field, (change, reply.body)


async def test_a_shared_network_takes_every_accounts_vms(api: Api) -> None:
    fabric = await make_fabric(api)
    body = {"name": "shared", "zone_id": fabric.zone, "cidr": "10.8.0.0/24", "isolation": "none"}
    refused = await api.post("/v1/networks", {**body, "purpose": "shared"}, token=api.alice)
    assert refused.status == 403 and refused.json()["field"] == "purpose"
    shared = await created(await api.post("/v1/networks", {**body, "purpose": "shared"}))
    alices = await created(await api.post("/v1/networks", {**body, "name": "own"}, token=api.alice))
    for token in (api.alice, api.bob):
        deployed = await api.post("/v1/vms", vm_body(fabric, network_ids=[shared]), token=token)
        assert deployed.status == 202, deployed.body
    # Another account's isolated network stays invisible.
    theirs = await api.post("/v1/vms", vm_body(fabric, network_ids=[alices]), token=api.bob)
    assert theirs.status == 404 and theirs.json()["field"] == "network_ids[0]"
    # A shared network gives no public IPs, and takes no router.
    no_ip = await api.post("/v1/ip-addresses", {"network_id": shared}, token=api.bob)
    assert no_ip.status == 404
