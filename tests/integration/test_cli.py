"""`cloud-engine up` (the README's run command) as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.postgres


def _up(data_dir) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env["CLOUD_ENGINE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_up_creates_the_demo_fabric_once(tmp_path):
    first = _up(tmp_path)
    assert first.returncode == 0, first.stderr
    for kind in ("Zone", "Pod", "Cluster", "Host", "StoragePool", "PhysicalNetwork", "Template"):
        assert kind in first.stdout
    assert first.stdout.count("Host ") == 2
    assert "Network          demo-net" in first.stdout
    events_line = [line for line in first.stdout.splitlines() if line.startswith("events stored")]

    second = _up(tmp_path)
    assert second.returncode == 0, second.stderr
    # The demo's idempotency keys find the same fabric: same ids, no new events.
    assert second.stdout == first.stdout
    assert events_line == [
        line for line in second.stdout.splitlines() if line.startswith("events stored")
    ]


def test_bad_configuration_is_a_clear_error_not_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(CLOUD_ENGINE_DATA_DIR=str(tmp_path), CLOUD_ENGINE_DB_POOL_SIZE="lots")
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CLOUD_ENGINE_DB_POOL_SIZE" in result.stderr
    assert "Traceback" not in result.stderr
