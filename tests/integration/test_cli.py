"""`cloud-engine up` (the README's run command) as a user runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer

from bus.cloudevents import from_record

pytestmark = pytest.mark.postgres


def _env(data_dir, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env["CLOUD_ENGINE_DATA_DIR"] = str(data_dir)
    env["CLOUD_ENGINE_LOG_FORMAT"] = "console"
    env.update(extra)
    return env


class Running:
    """`cloud-engine up` in the background, read until it says it runs."""

    def __init__(self, data_dir) -> None:
        # stderr (the logs) goes to a file: an unread pipe would fill and block.
        self.log_path = data_dir / f"up-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "up"],
            env=_env(data_dir),
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if line.startswith("running;"):
                return
        self.process.kill()
        self.process.communicate()
        raise AssertionError(f"up did not start: {self.lines} {self.logs}")

    @property
    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    @property
    def bootstrap(self) -> str:
        line = next(x for x in self.lines if "broker:" in x)
        return line.split("broker:")[1].split()[0]

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        self.lines += out.splitlines()
        self.log.close()
        return self.process.returncode, self.log_path.read_text()


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
    code, err = first.stop()
    assert code == 0, err
    assert first.lines[-1] == "stopped"

    second = Running(tmp_path)
    try:
        # Same fabric (same ids, versions), no new events: the demo is idempotent.
        assert [x for x in second.lines if x.startswith("  ")] == fabric
        stored = [x for x in first.lines if x.startswith("events stored")]
        assert stored == [x for x in second.lines if x.startswith("events stored")]
        # The new dev broker started empty; the relay republished everything.
        events = asyncio.run(_consume_all(second.bootstrap, "cloudengine.zone.events", 1))
        assert [e.type for e in events] == ["io.cloudengine.zone.created.v2"], second.logs
    finally:
        code, err = second.stop()
    assert code == 0, err


def test_bad_configuration_is_a_clear_error_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "runner.cli", "up"],
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
        [sys.executable, "-m", "runner.cli", "relay"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CLOUD_ENGINE_KAFKA_BOOTSTRAP" in result.stderr
