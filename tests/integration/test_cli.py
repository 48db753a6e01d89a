"""`cloud-engine up` (the README's run command) as a user runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from cloud_engine.bus.cloudevents import from_record

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

# A bench module (bench/ on the path); the other `up` tests import http from here.
from api_http import call as http

pytestmark = pytest.mark.postgres


def _env(data_dir, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env["CLOUD_ENGINE_DATA_DIR"] = str(data_dir)
    env["CLOUD_ENGINE_LOG_FORMAT"] = "console"
    # The demo hosts as `up` always had them (test_up_lab.py runs lab hosts).
    env["CLOUD_ENGINE_UP_HYPERVISOR"] = "test"
    env.update(extra)
    return env


class Running:
    """`cloud-engine up` in the background, read until it says it is ready."""

    # Every instance, so a test that fails half-way does not leave one
    # running (stop_leftovers).
    started: list[Running] = []

    def __init__(self, data_dir, **env: str) -> None:
        # stderr (the logs) goes to a file: an unread pipe would fill and block.
        self.log_path = data_dir / f"up-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        environ = _env(data_dir, CLOUD_ENGINE_API_PORT="0")
        environ.update(env)
        # An empty value unsets (CLOUD_ENGINE_LOG_FORMAT="": the default).
        environ = {k: v for k, v in environ.items() if v}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloud_engine.runner.cli", "up"],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        Running.started.append(self)
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if line.startswith("ready;"):
                return
        self.process.kill()
        self.process.communicate()
        raise AssertionError(f"up did not start: {self.lines} {self.logs}")

    @property
    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def value(self, label: str) -> str:
        return next(x for x in self.lines if x.startswith(label)).split(": ", 1)[1]

    def fabric_id(self, kind: str) -> str:
        return next(x for x in self.lines if x.split()[:1] == [kind]).split()[2]

    @property
    def bootstrap(self) -> str:
        line = next(x for x in self.lines if "broker:" in x)
        return line.split("broker:")[1].split()[0]

    def stop(self) -> tuple[int, str]:
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        self.stop_seconds = time.monotonic() - began
        self.lines += out.splitlines()
        self.log.close()
        return self.process.returncode, self.log_path.read_text()


@pytest.fixture(autouse=True)
def stop_leftovers() -> Iterator[None]:
    """An `up` a failed test did not stop is stopped as a user would (SIGINT:
    its broker, PostgreSQL and lab go with it; SIGKILL would leave them)."""
    yield
    while Running.started:
        running = Running.started.pop()
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGINT)
            try:
                running.process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.communicate()
        running.log.close()


async def _consume_all(bootstrap: str, topic: str, expected: int) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id="cli-test"
    )
    await consumer.start()
    events = []
    try:
        deadline = time.monotonic() + 30
        while len(events) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                events += [from_record(r.headers, r.value) for r in records]
    finally:
        await consumer.stop()
    return events


async def _wait_hosts_projected(pgdata) -> int:
    import asyncpg

    conn = await asyncpg.connect(host=str(pgdata), user="postgres", database="cloudengine")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                count = await conn.fetchval("SELECT count(*) FROM rm_host")
            except asyncpg.UndefinedTableError:
                count = 0
            if count == 2:
                return int(count)
            await asyncio.sleep(0.2)
        return int(count)
    finally:
        await conn.close()


def until(what: str, check, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def deploy_and_stop_over_http(up: Running) -> None:
    """What the README shows with curl: deploy a VM, watch it reach Running."""
    api, token = up.value("API"), up.value("admin token")
    assert http("GET", f"{api}/v1/zones", "wrong")[0] == 401
    template = up.fabric_id("Template")
    until(
        "the demo template fetched by the effector",
        lambda: http("GET", f"{api}/v1/templates/{template}", token)[1].get("state") == "Ready",
    )
    status, accepted = http(
        "POST",
        f"{api}/v1/vms",
        token,
        {
            "account": "demo",
            "name": "web-1",
            "zone_id": up.fabric_id("Zone"),
            "template_id": template,
            "spec": {"cpus": 1, "ram_mb": 512, "root_disk_gb": 1},
            "network_ids": [up.fabric_id("Network")],
        },
    )
    assert status == 202, accepted
    operation = f"{api}/v1/operations/{accepted['operation_id']}"
    done = until(
        "the deploy operation",
        lambda: (
            (op := http("GET", operation, token)[1]).get("state")
            in ("succeeded", "failed", "compensated")
            and op
        ),
    )
    assert done["state"] == "succeeded", done
    vm = http("GET", f"{api}/v1/vms/{accepted['resource_id']}", token)[1]
    assert vm["state"] == "Running", vm
    status, stop = http("POST", f"{api}/v1/vms/{accepted['resource_id']}/stop", token, {})
    assert status == 202, stop
    until(
        "the VM stopped",
        lambda: (
            http("GET", f"{api}/v1/vms/{accepted['resource_id']}", token)[1].get("state")
            == "Stopped"
        ),
    )


def test_up_runs_everything_and_resumes_with_data_kept(tmp_path):
    first = Running(tmp_path)
    fabric = [x for x in first.lines if x.startswith("  ")]
    kinds = " ".join(fabric)
    for kind in ("Zone", "Pod", "Cluster", "Host", "StoragePool", "PhysicalNetwork", "Template"):
        assert kind in kinds
    assert sum(x.split()[0] == "Host" for x in fabric) == 2
    # The relay inside `up` publishes the demo's events to the dev broker.
    events = asyncio.run(_consume_all(first.bootstrap, "cloudengine.host.events", 2))
    assert {e.type for e in events} == {"io.cloudengine.host.created.v1"}
    # The projection worker inside `up` fills the read models.
    assert asyncio.run(_wait_hosts_projected(first.log_path.parent / "pgdata")) == 2
    # The API, engine and effector inside `up`: a VM deployed with plain HTTP.
    deploy_and_stop_over_http(first)
    token = first.value("admin token")
    code, err = first.stop()
    assert code == 0, err
    assert first.lines[-1] == "stopped"

    second = Running(tmp_path)
    try:
        # Same fabric (same ids); the template fetched meanwhile; same token.
        again = [x for x in second.lines if x.startswith("  ")]
        assert [x.split()[:3] for x in again] == [x.split()[:3] for x in fabric]
        assert " Ready " in next(x for x in again if x.split()[0] == "Template")
        assert second.value("admin token") == token
        # The dev broker kept its records: the demo zone once, not republished.
        events = asyncio.run(_consume_all(second.bootstrap, "cloudengine.zone.events", 1))
        assert [e.type for e in events] == ["io.cloudengine.zone.created.v2"], second.logs
        api = second.value("API")
        vms = http("GET", f"{api}/v1/vms", token)[1]["items"]
        assert [(v["name"], v["state"]) for v in vms] == [("web-1", "Stopped")]
    finally:
        code, err = second.stop()
    assert code == 0, err


def test_bad_configuration_is_a_clear_error_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cloud_engine.runner.cli", "up"],
        env=_env(tmp_path, CLOUD_ENGINE_DB_POOL_SIZE="lots"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CLOUD_ENGINE_DB_POOL_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


def test_relay_without_broker_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cloud_engine.runner.cli", "relay"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CLOUD_ENGINE_KAFKA_BOOTSTRAP" in result.stderr
