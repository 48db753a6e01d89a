"""`cloud-engine token create` and `cloud-engine api` as an operator runs
them: against an external PostgreSQL URL, stopped by SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_engine.infra.database import DatabaseTarget

pytestmark = pytest.mark.postgres


def _env(target: DatabaseTarget, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_DATABASE_URL=target.url(),
        CLOUD_ENGINE_DATABASE_SCHEMA=target.schema,
        CLOUD_ENGINE_DATA_DIR=str(data_dir),
        CLOUD_ENGINE_LOG_FORMAT="json",
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_engine.runner.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _request(port: int, method: str, path: str, token: str | None = None, body: object = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_token_create_and_api_command(pg_target: DatabaseTarget, tmp_path: Path) -> None:
    env = _env(pg_target, tmp_path)
    refused = _cli(env, "token", "create", "--role", "user", "--account", "no spaces")
    assert refused.returncode == 2 and "--account" in refused.stderr
    made = _cli(env, "token", "create", "--role", "admin", "--account", "ops")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("ce_") and "\n" not in token
    assert "admin token" in made.stderr

    log = open(tmp_path / "api.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_engine.runner.cli", "api", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("API: http://127.0.0.1:"), (line, (tmp_path / "api.log").read_text())
        port = int(line.split()[1].rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while True:
            try:
                if _request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.1)
        assert _request(port, "GET", "/v1/zones")[0] == 401
        status, body = _request(port, "POST", "/v1/zones", token, {"name": "cli-zone"})
        assert status == 202, body
        zone = json.loads(body)["resource_id"]
        status, body = _request(port, "GET", f"/v1/zones/{zone}", token)
        assert status == 200 and json.loads(body)["name"] == "cli-zone"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, (tmp_path / "api.log").read_text()
        assert "stopped" in out
        # One JSON log line per request, with its request id.
        lines = [json.loads(x) for x in (tmp_path / "api.log").read_text().splitlines() if x]
        requests = [x for x in lines if x.get("event") == "request"]
        assert any(x["route"] == "/v1/zones" and x["status"] == 202 for x in requests)
        assert all(x["request_id"] for x in requests)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        log.close()


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "kafka_client.py"


def test_api_with_a_broker_takes_commands_over_kafka(
    pg_target: DatabaseTarget, tmp_path: Path, broker: str, topic_prefix: str
) -> None:
    env = _env(pg_target, tmp_path)
    env.update(CLOUD_ENGINE_KAFKA_BOOTSTRAP=broker, CLOUD_ENGINE_TOPIC_PREFIX=topic_prefix)
    made = _cli(env, "token", "create", "--role", "admin", "--account", "ops")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    log = open(tmp_path / "api.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_engine.runner.cli", "api", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("API: http://127.0.0.1:")
        logs = tmp_path / "api.log"
        deadline = time.monotonic() + 60
        while '"command gateway started"' not in logs.read_text():
            assert process.poll() is None and time.monotonic() < deadline, logs.read_text()
            time.sleep(0.1)
        client = subprocess.run(
            [sys.executable, str(EXAMPLE), "--bootstrap", broker, "--prefix", topic_prefix,
             "CreateZone", json.dumps({"name": "kafka-zone"})],
            env={**os.environ, "CLOUD_ENGINE_TOKEN": token},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert client.returncode == 0, (client.stdout, client.stderr, logs.read_text())
        answer = json.loads(client.stdout)
        assert answer["answer"] == "io.cloudengine.command.accepted.v1"
        assert answer["resource_type"] == "zone"
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, logs.read_text()
        assert "stopped" in out
        assert token not in logs.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        log.close()
