"""`cloud-engine up` from start to stop as a person and a supervisor see it:
readable lines on a terminal, JSON in a pipe, no traceback, "ready" only
once lists are complete, SIGINT (the terminal's Ctrl-C) and SIGTERM stop
everything, and a SIGKILL leaves nothing that the next `up` trips on."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.integration.test_cli import (  # stop_leftovers: autouse, stops any up left
    Running,
    _env,
    deploy_and_stop_over_http,
    http,
    stop_leftovers,  # noqa: F401
    until,
)

pytestmark = pytest.mark.postgres

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kafka_client.py"

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# ConsoleRenderer's line: local time, [level], event, key=value pairs.
CONSOLE_LINE = re.compile(r"^\d\d:\d\d:\d\d \[(debug|info|warning|error|critical) *\] \S")
# What `up` prints on stdout (the rest of a terminal's lines are log lines).
SUMMARY = (
    "event store: ",
    "embedded PostgreSQL data: ",
    "embedded dev broker: ",
    "demo fabric:",
    "  ",
    "events stored: ",
    "API: ",
    "web console: ",
    "admin token: ",
    "ready; ",
    "stopped",
)


class Terminal:
    """`cloud-engine up` on a pseudo-terminal (its controlling terminal, so
    a ^C typed there signals its whole process group, as at a shell)."""

    def __init__(self, data_dir: Path) -> None:
        env = _env(data_dir, CLOUD_ENGINE_API_PORT="0")
        del env["CLOUD_ENGINE_LOG_FORMAT"]  # the default: auto
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes `up`
            os.execve(sys.executable, [sys.executable, "-m", "cloud_engine.runner.cli", "up"], env)
        self.output = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.status: int | None = None
        until("up ready on the terminal", lambda: "ready; " in self.text, timeout=120)

    def _read(self) -> None:
        # Drained all along: a full terminal buffer would block `up`'s writes.
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: every writer closed it
                return
            if not chunk:
                return
            with self._lock:
                self.output += chunk

    @property
    def text(self) -> str:
        with self._lock:
            raw = self.output.decode(errors="replace")
        return ANSI.sub("", raw).replace("\r\n", "\n")

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def value(self, label: str) -> str:
        return next(x for x in self.lines if x.startswith(label)).split(": ", 1)[1]

    def fabric_id(self, kind: str) -> str:
        return next(x for x in self.lines if x.split()[:1] == [kind]).split()[2]

    def ctrl_c(self, timeout: float = 60) -> int:
        os.write(self.fd, b"\x03")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reader.join(10)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"up did not stop on ^C: {self.text}")


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_terminal_gets_quiet_readable_lines_and_no_traceback_to_ctrl_c(tmp_path):
    up = Terminal(tmp_path)
    try:
        deploy_and_stop_over_http(up)
    finally:
        code = up.ctrl_c()
    text = up.text
    assert code == 0, text
    assert "Traceback" not in text
    assert up.lines[-1] == "stopped", text
    logs = [x for x in up.lines if x and not x.startswith(SUMMARY) and x != "^C"]
    # ^C echoes on the line where the next output starts.
    logs = [x.removeprefix("^C") for x in logs]
    assert logs, text
    unreadable = [x for x in logs if not CONSOLE_LINE.match(x)]
    assert not unreadable, text
    levels = [CONSOLE_LINE.match(x).group(1) for x in logs]  # type: ignore[union-attr]
    assert "error" not in levels, text
    # Quiet: lifecycle lines and warnings, not each consumer's or result's.
    assert any(" ready " in x for x in logs), text
    assert any(" stopping " in x for x in logs), text
    for noisy in ("consumer started", "result_published", "created topics"):
        assert noisy not in text


def test_piped_json_lines_ready_means_complete_and_sigterm_leaves_nothing(tmp_path):
    up = Running(tmp_path, CLOUD_ENGINE_LOG_FORMAT="")  # the default: auto
    api, token = up.value("API"), up.value("admin token")
    # Right after "ready": the lists are complete.
    zones = http("GET", f"{api}/v1/zones", token)[1]["items"]
    assert [z["name"] for z in zones] == ["demo-zone"]
    hosts = http("GET", f"{api}/v1/hosts", token)[1]["items"]
    assert sorted(h["name"] for h in hosts) == ["host-1", "host-2"]
    deploy_over_kafka(up, api, token)
    postgres = postmaster_pid(tmp_path)
    children = psutil.Process(up.process.pid).children(recursive=True)
    assert children, "up runs the broker and the database's watchdog"
    # Stopped once every consumer has joined its group: a stop during a join
    # waits for it (the dev broker answers a group's first join after 5 s).
    until("the consumers started", lambda: up.logs.count('"consumer started"') >= 3)
    code, logs = up.stop()
    assert code == 0, logs
    assert up.lines[-1] == "stopped"
    lines = [x for x in logs.splitlines() if x]
    assert lines
    for line in lines:
        json.loads(line)  # every line a JSON object, the libraries' too
    assert "Traceback" not in logs
    assert gone(postgres), f"PostgreSQL {postgres} outlived up"
    left = [c.pid for c in children if not gone(c.pid)]
    assert not left, f"processes left: {left}"


def deploy_over_kafka(up: Running, api: str, token: str) -> None:
    """An integrator's deploy through Kafka alone, with the example client
    of docs/events.md: its answer, then its operation's events to the end."""
    template = up.fabric_id("Template")
    until(
        "the demo template fetched by the effector",
        lambda: http("GET", f"{api}/v1/templates/{template}", token)[1].get("state") == "Ready",
    )
    # The demo ISO beside it, fetched from the same loopback server.
    iso = next(x.split()[2] for x in up.lines if x.split()[:2] == ["Template", "tiny-linux-live"])
    until(
        "the demo ISO fetched by the effector",
        lambda: http("GET", f"{api}/v1/templates/{iso}", token)[1].get("state") == "Ready",
    )
    deploy = {
        "account": "demo",
        "name": "kafka-1",
        "zone_id": up.fabric_id("Zone"),
        "template_id": template,
        "spec": {"cpus": 1, "ram_mb": 512, "root_disk_gb": 1},
        "network_ids": [up.fabric_id("Network")],
    }
    client = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", up.bootstrap, "--follow",
         "DeployVm", json.dumps(deploy)],
        env={**os.environ, "CLOUD_ENGINE_TOKEN": token},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert client.returncode == 0, (client.stdout, client.stderr)
    lines = [json.loads(x) for x in client.stdout.splitlines()]
    assert lines[0]["answer"] == "io.cloudengine.command.accepted.v1", lines
    assert lines[-1]["event"] == "succeeded", lines
    vm = http("GET", f"{api}/v1/vms/{lines[0]['resource_id']}", token)[1]
    assert vm["name"] == "kafka-1" and vm["state"] == "Running", vm
    metrics = urllib.request.urlopen(f"{api}/metrics", timeout=30).read().decode()
    assert 'cloudengine_kafka_commands_total{outcome="accepted",status="202"} 1.0' in metrics
    assert token not in up.logs


def _watchdog(up: Running) -> psutil.Process:
    return next(
        c
        for c in psutil.Process(up.process.pid).children()
        if "infra.pg_handles" in " ".join(c.cmdline())
    )


def test_a_killed_up_leaves_no_postgres_and_the_next_up_starts(tmp_path):
    first = Running(tmp_path)
    postgres = postmaster_pid(tmp_path)
    first.process.kill()
    first.process.wait(10)
    first.log.close()
    # Its watchdog stops the server it no longer needs.
    until("the killed up's PostgreSQL gone", lambda: gone(postgres), timeout=20)

    second = Running(tmp_path)
    try:
        api, token = second.value("API"), second.value("admin token")
        assert [z["name"] for z in http("GET", f"{api}/v1/zones", token)[1]["items"]] == [
            "demo-zone"
        ]
        again = postmaster_pid(tmp_path)
    finally:
        code, logs = second.stop()
    assert code == 0, logs
    assert gone(again)


def test_up_stops_a_postgres_left_by_an_up_killed_with_its_watchdog(tmp_path):
    """As a supervisor killing the whole group does: the server stays up with
    a dead process listed as using it. The next `up` must not adopt it and
    then leave it running when it stops."""
    first = Running(tmp_path)
    stale = postmaster_pid(tmp_path)
    watchdog = _watchdog(first)
    watchdog.kill()
    first.process.kill()
    first.process.wait(10)
    watchdog.wait(10)
    first.log.close()
    time.sleep(1)
    assert not gone(stale), "the server outlives a killed up and its watchdog"

    second = Running(tmp_path)
    try:
        fresh = postmaster_pid(tmp_path)
        assert gone(stale), "the stale server was stopped"
        assert fresh != stale
        assert "stopped a stale embedded PostgreSQL" in second.logs
    finally:
        code, logs = second.stop()
    assert code == 0, logs
    assert gone(fresh), f"PostgreSQL {fresh} outlived the second up"
