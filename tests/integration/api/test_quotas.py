"""Account quotas against a live API on real PostgreSQL: 50 deploys sent at
once, half through a second API with its own command service, writer and
aggregate cache (as a second process has), never take an account past its
limit; the refusals are 409 quota-exceeded naming the limit, and the
account sees its usage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from api_harness import Api, Reply, make_fabric, new_key, start_api, vm_body

from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget

pytestmark = pytest.mark.postgres

DEPLOYS = 50


@pytest.fixture
async def second_api(pg_target: DatabaseTarget) -> AsyncIterator[Api]:
    store = EventStore(pg_target, pool_size=4)
    service = CommandService(store)
    running, stop, task = await start_api(pg_target, service, store)
    try:
        yield running
    finally:
        stop.set()
        await task
        service.close()
        store.close()


def _at_once(calls: list[tuple[Api, str, dict, str]]) -> list[Reply]:
    """Every request from its own thread, released together."""
    start = threading.Barrier(len(calls))

    def send(call: tuple[Api, str, dict, str]) -> Reply:
        api, path, body, token = call
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                   "Idempotency-Key": new_key()}  # fmt: skip
        start.wait()
        return api._send("POST", path, json.dumps(body).encode(), headers)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(send, calls))


def _quota(reply: Reply, name: str) -> dict:
    assert reply.status == 200, reply.body
    return next(q for q in reply.json()["items"] if q["limit"] == name)


async def test_concurrent_deploys_never_pass_the_limit(api: Api, second_api: Api) -> None:
    fabric = await make_fabric(api)
    limits = await api.post("/v1/quotas", {"account": "alice", "vms": 5, "vcpus": 9},
                            key=new_key())  # fmt: skip
    assert limits.status == 202, limits.body
    # Users may not set limits, and see only their own account's.
    assert (
        await api.post("/v1/quotas", {"account": "alice", "vms": 50}, token=api.alice)
    ).status == 403
    assert (await api.get("/v1/quotas?account=bob", token=api.alice)).status == 403

    calls = [
        (api if i % 2 else second_api, "/v1/vms", vm_body(fabric, f"vm-{i}"),
         api.alice if i % 2 else second_api.alice)
        for i in range(DEPLOYS)
    ]  # fmt: skip
    replies = await asyncio.to_thread(_at_once, calls)
    accepted = [r for r in replies if r.status == 202]
    refused = [r for r in replies if r.status == 409]
    assert len(accepted) + len(refused) == DEPLOYS, [(r.status, r.body) for r in replies]
    assert len(accepted) == 5
    for reply in refused:
        problem = reply.json()
        assert problem["rule"] == "quota-exceeded" and problem["field"] == "vms", problem
        assert "vms limit 5" in problem["detail"]

    # What the log holds agrees: five VMs of alice's, and her usage says so.
    await api.project()
    listed = (await api.get("/v1/vms?account=alice&limit=500")).json()["items"]
    assert len(listed) == 5
    assert _quota(await second_api.get("/v1/quotas", token=second_api.alice), "vms") == {
        "limit": "vms", "max": 5, "used": 5,
    }  # fmt: skip
    vcpus = _quota(await api.get("/v1/quotas", token=api.alice), "vcpus")
    assert vcpus == {"limit": "vcpus", "max": 9, "used": 5}

    # The same through the CLI: the usage, and a refused deploy's exit code.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(CLOUD_ENGINE_URL=f"http://127.0.0.1:{api.port}", CLOUD_ENGINE_TOKEN=api.alice,
               CLOUD_ENGINE_CONFIG=os.devnull)  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cloud_engine.runner.entry", *args],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    shown = await asyncio.to_thread(cli, "quota", "list", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert {"limit": "vms", "max": 5, "used": 5} in json.loads(shown.stdout)
    over = await asyncio.to_thread(
        cli, "vm", "deploy", "--name", "one-more", "--zone-id", fabric.zone,
        "--template-id", fabric.template, "--cpus", "1", "--ram-mb", "256", "--root-disk-gb", "1",
    )  # fmt: skip
    assert over.returncode == 1 and "vms limit 5 reached" in over.stderr, over.stderr
    assert "(field vms)" in over.stderr

    # Another limit: with room for VMs, 2-vCPU deploys stop at 9 vCPUs.
    assert (await api.post("/v1/quotas", {"account": "alice", "vms": None})).status == 202
    body = vm_body(fabric, "big")
    body["spec"] = {**body["spec"], "cpus": 2}
    replies = await asyncio.to_thread(
        _at_once, [(api, "/v1/vms", {**body, "name": f"big-{i}"}, api.alice) for i in range(6)]
    )
    assert sorted(r.status for r in replies) == [202, 202, 409, 409, 409, 409]
    assert {r.json()["field"] for r in replies if r.status == 409} == {"vcpus"}
    vcpus = _quota(await api.get("/v1/quotas", token=api.alice), "vcpus")
    assert vcpus["used"] == 9 and _quota(await api.get("/v1/quotas?account=alice"), "vms") == {
        "limit": "vms", "max": None, "used": 7,
    }  # fmt: skip
    # Other accounts have no limits.
    bob = await api.post("/v1/vms", vm_body(fabric, "bobs", **{"account": "bob"}), key=new_key())
    assert bob.status == 202, bob.body
