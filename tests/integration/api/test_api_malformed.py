"""A table of malformed requests: each gets the right 4xx and a problem
document naming the field (or rule) that failed; none gets a 500."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from api_harness import Api, make_fabric, vm_body

PROBLEM = "application/problem+json"


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    field: str | None = None
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    token: str = "admin"  # or "alice", or "" for none
    type_suffix: str | None = None


def cases(f: Any) -> list[Case]:
    vm = vm_body(f)
    spec = vm["spec"]
    json_header = {"Content-Type": "application/json"}
    return [
        Case("truncated JSON", "POST", "/v1/zones", 400, raw=b'{"name": ', headers=json_header,
             type_suffix="malformed-json"),
        Case("not UTF-8", "POST", "/v1/zones", 400, raw=b"\xff\xfe", headers=json_header),
        Case("trailing garbage", "POST", "/v1/zones", 400, raw=b'{"name":"z"} x',
             headers=json_header),
        Case("no body", "POST", "/v1/zones", 400),
        Case("array body", "POST", "/v1/zones", 422, body=[]),
        Case("null body", "POST", "/v1/zones", 422, body=None, raw=b"null", headers=json_header),
        Case("wrong type", "POST", "/v1/zones", 422, "name", body={"name": 5}),
        Case("missing field", "POST", "/v1/zones", 422, "name", body={}),
        Case("unknown field", "POST", "/v1/zones", 422, "colour",
             body={"name": "z", "colour": "red"}),
        Case("bad enum", "POST", "/v1/zones", 422, "network_type",
             body={"name": "z", "network_type": "Flat"}),
        Case("empty name", "POST", "/v1/zones", 422, "name", body={"name": ""}),
        Case("cpus zero", "POST", "/v1/vms", 422, "spec.cpus",
             body={**vm, "spec": {**spec, "cpus": 0}}, token="alice"),
        Case("cpus huge", "POST", "/v1/vms", 422, "spec.cpus",
             body={**vm, "spec": {**spec, "cpus": 10**9}}, token="alice"),
        Case("cpus a string", "POST", "/v1/vms", 422, "spec.cpus",
             body={**vm, "spec": {**spec, "cpus": "two"}}, token="alice"),
        Case("unknown nested field", "POST", "/v1/vms", 422, "spec.gpus",
             body={**vm, "spec": {**spec, "gpus": 1}}, token="alice"),
        Case("missing nested field", "POST", "/v1/vms", 422, "spec.ram_mb",
             body={**vm, "spec": {"cpus": 1, "root_disk_gb": 1}}, token="alice"),
        Case("bad uuid in list", "POST", "/v1/vms", 422, "network_ids[0]",
             body={**vm, "network_ids": ["nope"]}, token="alice"),
        Case("bad uuid", "POST", "/v1/vms", 422, "zone_id",
             body={**vm, "zone_id": "zone-1"}, token="alice"),
        Case("too many disks", "POST", "/v1/vms", 422, "data_disks_gb",
             body={**vm, "data_disks_gb": [1] * 16}, token="alice"),
        Case("port out of range", "POST", "/v1/network-rules", 422, "start_port",
             body={"network_id": str(uuid.uuid4()), "kind": "firewall", "start_port": 70000},
             token="alice"),
        Case("bad isolation", "POST", "/v1/networks", 422, "isolation",
             body={"name": "n", "zone_id": f.zone, "cidr": "10.0.0.0/24",
                   "isolation": "MPLS"}, token="alice"),
        Case("engine validation", "POST", "/v1/networks", 422, "cidr",
             body={"name": "n", "zone_id": f.zone, "cidr": "10.0.0.1/24",
                   "isolation": "none"}, token="alice", type_suffix="validation"),
        Case("zone not found", "POST", "/v1/pods", 404, "zone_id",
             body={"zone_id": str(uuid.uuid4()), "name": "p", "gateway": "10.0.0.1",
                   "cidr": "10.0.0.0/24"}),
        Case("action body unknown field", "POST", f"/v1/zones/{f.zone}/disable", 422, "now",
             body={"now": True}),
        Case("text/plain body", "POST", "/v1/zones", 415, "Content-Type",
             raw=b'{"name":"z"}', headers={"Content-Type": "text/plain"}),
        Case("body too large", "POST", "/v1/zones", 413,
             raw=b'{"name":"' + b"x" * (1 << 20) + b'"}', headers=json_header),
        Case("idempotency key with space", "POST", "/v1/zones", 400, "Idempotency-Key",
             body={"name": "z"}, headers={"Idempotency-Key": "a b"}),
        Case("idempotency key too long", "POST", "/v1/zones", 400, "Idempotency-Key",
             body={"name": "z"}, headers={"Idempotency-Key": "k" * 256}),
        Case("limit zero", "GET", "/v1/vms?limit=0", 400, "limit"),
        Case("limit too big", "GET", "/v1/vms?limit=501", 400, "limit"),
        Case("limit not a number", "GET", "/v1/vms?limit=ten", 400, "limit"),
        Case("unknown filter", "GET", "/v1/vms?colour=red", 400, "colour"),
        Case("filter not a uuid", "GET", "/v1/vms?zone_id=nope", 400, "zone_id"),
        Case("filter twice", "GET", "/v1/vms?state=Running&state=Stopped", 400, "state"),
        Case("forged cursor", "GET", "/v1/vms?cursor=bm9wZQ", 400, "cursor"),
        Case("unknown route", "GET", "/v1/flavours", 404, type_suffix="no-such-endpoint"),
        Case("id not a uuid", "GET", "/v1/vms/123", 404),
        Case("unknown id", "GET", f"/v1/vms/{uuid.uuid4()}", 404, type_suffix="not-found"),
        Case("unknown id, action", "POST", f"/v1/vms/{uuid.uuid4()}/start", 404, "id",
             token="alice"),
        Case("wrong type of id", "POST", f"/v1/vms/{f.zone}/start", 404, "id"),
        Case("wrong method", "DELETE", "/v1/vms", 405, type_suffix="method-not-allowed"),
        Case("wrong method on action", "GET", f"/v1/zones/{f.zone}/enable", 405),
    ]  # fmt: skip


async def test_malformed_requests_get_problem_documents(api: Api) -> None:
    fabric = await make_fabric(api)
    tokens = {"admin": api.admin, "alice": api.alice, "": None}
    wrong: list[str] = []
    for case in cases(fabric):
        reply = await api.call(
            case.method,
            case.path,
            token=tokens[case.token],
            body=case.body,
            raw=case.raw,
            headers=case.headers,
        )
        try:
            assert reply.status == case.status, f"status {reply.status}: {reply.body[:300]!r}"
            assert reply.content_type == PROBLEM, reply.content_type
            problem = reply.json()
            assert problem["status"] == case.status
            assert problem["title"] and problem["detail"] and problem["type"]
            assert problem["request_id"] == reply.headers["x-request-id"]
            assert problem.get("field") == case.field, f"field {problem.get('field')!r}"
            if case.type_suffix is not None:
                assert problem["type"].endswith(case.type_suffix), problem["type"]
            if case.status == 405:
                assert reply.headers["allow"]
        except AssertionError as error:
            wrong.append(f"{case.name}: {error}")
    assert not wrong, "\n".join(wrong)
    metrics = (await api.call("GET", "/metrics")).body.decode()
    assert 'status="500"' not in metrics
