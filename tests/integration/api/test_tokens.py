"""Tokens as an operator manages them: two `cloud-engine api` processes on
one real PostgreSQL, tokens created, listed and revoked with the client CLI
(`cloud-engine token ...`) through one of them; the revoked token is
refused by both once the verification cache's half second has passed, an
expired one likewise, and a listing never shows a secret."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_engine.api.tokens import CACHE_SECONDS
from cloud_engine.infra.database import DatabaseTarget

pytestmark = pytest.mark.postgres

CLI = [sys.executable, "-m", "cloud_engine.runner.entry"]


def _env(target: DatabaseTarget, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_DATABASE_URL=target.url(),
        CLOUD_ENGINE_DATABASE_SCHEMA=target.schema,
        CLOUD_ENGINE_DATA_DIR=str(tmp),
        CLOUD_ENGINE_LOG_FORMAT="json",
        CLOUD_ENGINE_CONFIG=str(tmp / "config.toml"),
    )
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def _status(port: int, path: str, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture
def two_apis(pg_target: DatabaseTarget, tmp_path: Path) -> Iterator[list[int]]:
    env = _env(pg_target, tmp_path)
    processes, ports = [], []
    try:
        for i in range(2):
            log = open(tmp_path / f"api{i}.log", "w")  # noqa: SIM115
            process = subprocess.Popen(
                [*CLI, "api", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=log,
                text=True,
            )  # fmt: skip
            processes.append((process, log))
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("API: http://127.0.0.1:"), (tmp_path / f"api{i}.log").read_text()
            ports.append(int(line.split()[1].rsplit(":", 1)[1]))
        for port in ports:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if _status(port, "/readyz", "") == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "an API did not become ready"
                time.sleep(0.1)
        yield ports
    finally:
        for process, log in processes:
            process.terminate()
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
            log.close()


def test_a_revoked_token_is_refused_by_every_api_process(
    pg_target: DatabaseTarget, tmp_path: Path, two_apis: list[int]
) -> None:
    a, b = two_apis
    env = _env(pg_target, tmp_path)
    # No profile yet: `token create` is the server-side bootstrap.
    made = _cli(env, "token", "create", "--role", "admin", "--account", "ops")
    assert made.returncode == 0, made.stderr
    admin = made.stdout.strip()
    login = _cli(env, "login", f"http://127.0.0.1:{a}", stdin=admin + "\n")
    assert login.returncode == 0, login.stderr

    # Now over HTTP through process A.
    made = _cli(env, "token", "create", "--role", "user", "--account", "alice",
                "--expires-in-s", "3600", "--description", "ci")  # fmt: skip
    assert made.returncode == 0, made.stderr
    alice = made.stdout.strip()
    assert alice.startswith("ce_") and "\n" not in alice
    short = _cli(env, "token", "create", "--role", "user", "--account", "bob",
                 "--expires-in-s", "1", "-o", "json")  # fmt: skip
    assert short.returncode == 0, short.stderr
    bob = json.loads(short.stdout)["token"]

    listed = _cli(env, "token", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["account"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"ops", "alice", "bob"}
    assert rows["alice"]["state"] == "active" and rows["alice"]["expires_at"] is not None
    assert rows["alice"]["description"] == "ci"
    text = listed.stdout
    assert (
        alice not in text
        and admin not in text
        and "sha256" not in text
        and "token" not in {k for r in rows.values() for k in r}
    )

    # Alice works on both processes (and each now holds her token in its cache).
    assert _status(a, "/v1/vms", alice) == 200 and _status(b, "/v1/vms", alice) == 200
    # Only admins manage tokens.
    assert _status(b, "/v1/tokens", alice) == 403

    revoked = _cli(env, "token", "revoke", str(rows["alice"]["id"]), "-o", "json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["state"] == "revoked"
    # The bound the API promises: a verified token is trusted CACHE_SECONDS
    # (0.5 s) at most, so one second after the revoke both processes refuse it.
    time.sleep(2 * CACHE_SECONDS)
    assert _status(a, "/v1/vms", alice) == 401
    assert _status(b, "/v1/vms", alice) == 401
    # bob's token expired (1 s) meanwhile: refused too, listed as expired.
    time.sleep(max(0.0, 1.0 + CACHE_SECONDS - 2 * CACHE_SECONDS))
    assert _status(b, "/v1/vms", bob) == 401
    shown = _cli(env, "token", "show", str(rows["bob"]["id"]), "-o", "json")
    assert json.loads(shown.stdout)["state"] == "expired"
    # The admin's own token still works on both, and revoking twice keeps the time.
    assert _status(b, "/v1/tokens", admin) == 200
    again = _cli(env, "token", "revoke", str(rows["alice"]["id"]), "-o", "json")
    assert json.loads(again.stdout)["revoked_at"] == json.loads(revoked.stdout)["revoked_at"]
    unknown = _cli(env, "token", "revoke", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1 and "Not Found" in unknown.stderr
