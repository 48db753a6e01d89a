"""`up` supervises what it starts: a SIGKILLed embedded PostgreSQL or dev
broker is started again, every component reconnects by itself, commands are
accepted again, and nothing is lost: a VM deployed before the kill and one
deployed after it both run, and an independent consumer sees every event of
the log in order per entity."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections import defaultdict

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from cloud_engine.bus.cloudevents import from_record
from tests.integration.test_cli import (  # stop_leftovers: autouse, stops any up left
    Running,
    http,
    stop_leftovers,  # noqa: F401
    until,
)
from tests.integration.test_up import gone, postmaster_pid

pytestmark = pytest.mark.postgres


def deploy(up: Running, name: str) -> str:
    """Deploy a VM over HTTP, retrying while the API answers 503 (its
    database is coming back); return the VM's id once it runs."""
    api, token = up.value("API"), up.value("admin token")
    body = {
        "account": "demo",
        "name": name,
        "zone_id": up.fabric_id("Zone"),
        "template_id": up.fabric_id("Template"),
        "spec": {"cpus": 1, "ram_mb": 256, "root_disk_gb": 1},
        "network_ids": [up.fabric_id("Network")],
    }

    def accepted() -> dict | None:
        try:
            status, reply = http("POST", f"{api}/v1/vms", token, body)
        except OSError:  # the API's socket between two of its runs
            return None
        assert status in (202, 503), (status, reply)
        return reply if status == 202 else None

    reply = until(f"{name} accepted", accepted, timeout=120)
    operation = f"{api}/v1/operations/{reply['operation_id']}"
    done = until(
        f"{name}'s deploy to end",
        lambda: (
            (op := http("GET", operation, token)[1]).get("state")
            in ("succeeded", "failed", "compensated")
            and op
        ),
        timeout=120,
    )
    assert done["state"] == "succeeded", done
    vm = http("GET", f"{api}/v1/vms/{reply['resource_id']}", token)[1]
    assert vm["state"] == "Running", vm
    return str(reply["resource_id"])


def vm_state(up: Running, vm: str) -> str:
    return str(http("GET", f"{up.value('API')}/v1/vms/{vm}", up.value("admin token"))[1]["state"])


def restarts(up: Running) -> dict[str, float]:
    with urllib.request.urlopen(f"{up.value('API')}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("cloudengine_up_restarts_total{"):
            part = line.split('part="', 1)[1].split('"', 1)[0]
            found[part] = float(line.rsplit(" ", 1)[1])
    return found


def log_lines(up: Running, event: str) -> list[dict]:
    lines = []
    for line in up.logs.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == event:
            lines.append(json.loads(line))
    return lines


async def versions_in_log(pgdata, vms: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(host=str(pgdata), user="postgres", database="cloudengine")
    try:
        rows = await conn.fetch(
            "SELECT originator_id::text AS id, max(originator_version) AS v"
            " FROM cloudengine_events WHERE originator_id = ANY($1::uuid[])"
            " GROUP BY originator_id",
            vms,
        )
    finally:
        await conn.close()
    return {r["id"]: int(r["v"]) for r in rows}


async def versions_seen(bootstrap: str, want: dict[str, int]) -> dict[str, list[int]]:
    """Each VM's event versions in the order an independent consumer (a
    group of its own, from the start of the topic) receives them."""
    consumer = AIOKafkaConsumer(
        "cloudengine.vm.events",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"supervise-test-{time.monotonic_ns()}",
    )
    await consumer.start()
    seen: dict[str, list[int]] = defaultdict(list)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            max(seen[vm], default=0) < n for vm, n in want.items()
        ):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    event = from_record(record.headers, record.value)
                    if event.subject in want:
                        seen[event.subject].append(event.aggregate_version)
    finally:
        await consumer.stop()
    return seen


def check_delivered_in_order(up: Running, pgdata, vms: list[str]) -> None:
    want = asyncio.run(versions_in_log(pgdata, vms))
    assert set(want) == set(vms)
    seen = asyncio.run(versions_seen(up.bootstrap, want))
    for vm, last in want.items():
        versions = seen[vm]
        # At least once (a republish repeats), never out of order: each
        # version is new or repeats one already seen.
        first_seen = list(dict.fromkeys(versions))
        assert first_seen == list(range(1, last + 1)), (vm, versions)


def test_up_restarts_a_killed_postgres_and_broker_and_loses_nothing(tmp_path):
    # Retention off: the independent consumer reads every VM's events from
    # the first one, minutes after the components read them.
    up = Running(tmp_path, CLOUD_ENGINE_LOG_FORMAT="json", CLOUD_ENGINE_DEV_BROKER_RETENTION_S="0")
    pgdata = tmp_path / "pgdata"
    api, token, template = up.value("API"), up.value("admin token"), up.fabric_id("Template")
    until(
        "the demo template fetched by the effector",
        lambda: http("GET", f"{api}/v1/templates/{template}", token)[1].get("state") == "Ready",
    )
    before = deploy(up, "before")

    # PostgreSQL crashes (no clean stop; its children go with it).
    killed = postmaster_pid(tmp_path)
    os.kill(killed, signal.SIGKILL)
    until("the killed PostgreSQL gone", lambda: gone(killed))
    after_db = deploy(up, "after-db")
    assert postmaster_pid(tmp_path) != killed
    assert up.process.poll() is None

    # The durable dev broker crashes: its records are in PostgreSQL.
    broker = json.loads((tmp_path / "dev-broker.json").read_text())["broker_pid"]
    os.kill(broker, signal.SIGKILL)
    after_broker = deploy(up, "after-broker")
    assert json.loads((tmp_path / "dev-broker.json").read_text())["broker_pid"] != broker

    vms = [before, after_db, after_broker]
    assert [vm_state(up, vm) for vm in vms] == ["Running"] * 3
    check_delivered_in_order(up, pgdata, vms)

    # What an operator sees: one restart of each, counted and logged.
    assert restarts(up) == {"postgresql": 1.0, "broker": 1.0}
    ended = log_lines(up, "server ended, restarting")
    assert [line["part"] for line in ended] == ["postgresql", "broker"]
    assert [line["part"] for line in log_lines(up, "server restarted")] == [
        "postgresql",
        "broker",
    ]
    # The components reconnected by themselves: none had to be replaced.
    assert log_lines(up, "component ended, restarting") == []
    code, logs = up.stop()
    assert code == 0, logs
