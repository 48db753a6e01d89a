"""The client CLI (`cloud-engine login`, `vm deploy --wait`, `vm list -o
json`, ...) as a person runs it: the real `cloud-engine` command in a
subprocess against a live API on real PostgreSQL, with the whole pipeline
(relay, projections, engine, effector on libvirt's test driver) on the dev
broker, so --wait follows a real operation to Running."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from api_harness import Api, deploy_spec, until
from test_api_e2e import pipeline  # noqa: F401  (the pipeline fixture)

from tests import fabric

pytestmark = pytest.mark.postgres

CLI = [sys.executable, "-m", "cloud_engine.runner.entry"]


def _env(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env["CLOUD_ENGINE_CONFIG"] = str(config)
    env.update(extra)
    return env


async def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [*CLI, *args], env=env, input=stdin, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


async def test_cli_against_a_live_api(
    api: Api,
    pipeline: list[asyncio.Task],  # noqa: F811
    template_url: tuple[str, str],
    tmp_path: Path,
) -> None:
    url, sha256 = template_url
    made = await fabric.build_http(api, deploy_spec(url, sha256, tmp_path), admin=api.admin)
    base = f"http://127.0.0.1:{api.port}"
    config = tmp_path / "home" / "cloud-engine" / "config.toml"
    env = _env(config)

    # login: the token from stdin, checked against the API, stored 0600.
    bad = await _cli(env, "login", base, stdin="ce_not-a-token\n")
    assert bad.returncode == 1 and "Unauthorized" in bad.stderr, bad.stderr
    assert not config.exists()
    done = await _cli(env, "login", base, stdin=api.alice + "\n")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert api.alice not in done.stdout + done.stderr
    done = await _cli(env, "login", base, "--profile", "ops", stdin=api.admin + "\n")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    async def template_ready() -> bool:
        reply = await api.get(f"/v1/templates/{made.template}", token=api.alice)
        return reply.status == 200 and reply.json()["state"] == "Ready"

    await until("template Ready", pipeline, template_ready)

    # Deploy with --wait: names stand for ids; stdout is the finished operation.
    deploy = await _cli(
        env, "vm", "deploy", "--name", "web", "--zone-id", "z",
        "--template-id", made.template, "--cpus", "1", "--ram-mb", "128",
        "--root-disk-gb", "1", "--wait", "-o", "json",
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stderr
    op = json.loads(deploy.stdout)
    assert op["state"] == "succeeded" and op["attributes"]["kind"] == "vm.deploy"
    assert [s["status"] for s in op["attributes"]["steps"]] == ["done", "done", "done"]
    assert "succeeded" in deploy.stderr  # the steps as they went, on stderr
    vm_id = op["attributes"]["resource_id"]

    listed = await _cli(env, "vm", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    vms = json.loads(listed.stdout)
    assert [(v["id"], v["name"], v["account"]) for v in vms] == [(vm_id, "web", "alice")]
    assert vms[0]["state"] == "Running"  # deploy's start step finished on Running
    table = await _cli(env, "vm", "list")
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"]
    assert vm_id in table.stdout and "Running" in table.stdout

    # A refused command: exit 1, the problem's title and detail on stderr.
    again = await _cli(env, "vm", "start", "web")
    assert again.returncode == 1
    assert "Conflict" in again.stderr and "cannot start" in again.stderr, again.stderr
    assert again.stdout == ""
    forbidden = await _cli(env, "host", "list")
    assert forbidden.returncode == 1 and "Forbidden" in forbidden.stderr
    # The other profile is the admin's: it sees the fabric.
    hosts = await _cli(env, "host", "list", "-o", "json", "--profile", "ops")
    assert hosts.returncode == 0 and len(json.loads(hosts.stdout)) == 2
    hosts = await _cli(_env(config, CLOUD_ENGINE_PROFILE="ops"), "host", "list", "-o", "yaml")
    assert hosts.returncode == 0 and hosts.stdout.count("- id:") == 2

    # Usage and unreachable have their own codes.
    usage = await _cli(env, "vm", "deploy", "--name", "x")
    assert usage.returncode == 2 and "--cpus" in usage.stderr
    gone = await _cli(_env(config, CLOUD_ENGINE_URL="http://127.0.0.1:9"), "vm", "list")
    assert gone.returncode == 3 and "unreachable" in gone.stderr

    # An operation that fails (no host has 64 CPUs): exit 4 with its error.
    big = await _cli(
        env, "vm", "deploy", "--name", "big", "--zone-id", made.zone,
        "--template-id", made.template, "--cpus", "1024", "--ram-mb", "128",
        "--root-disk-gb", "1", "--wait",
    )  # fmt: skip
    assert big.returncode == 4, (big.returncode, big.stderr)
    assert "operation failed" in big.stderr or "operation compensated" in big.stderr

    # Events of any resource by id alone.
    events = await _cli(env, "events", vm_id, "-o", "json")
    assert events.returncode == 0, events.stderr
    names = [e["event"] for e in json.loads(events.stdout)]
    assert names[0] == "created" and "started" in names

    completion = await _cli(env, "completion", "bash")
    assert completion.returncode == 0
    assert "complete -F _cloud_engine cloud-engine" in completion.stdout
    assert "enter-maintenance" in completion.stdout
