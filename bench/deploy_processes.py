"""bench/deploy.py's processes: relay, projections, engine and effector
each as its own `cloud-engine` process (started one after another, watched,
stopped), and the CPU seconds of those, the broker and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.settings import EventLoop

ROOT = Path(__file__).resolve().parent.parent
TOPIC_PREFIX = "cloudengine"
PARTITIONS = 8


class Components:
    """relay, projections, engine and effector as `cloud-engine` processes;
    their output goes to a log file each (printed if one fails)."""

    def __init__(
        self,
        target: DatabaseTarget,
        bootstrap: str,
        logs: Path,
        event_loop: EventLoop = "uvloop",
        partitions: int = PARTITIONS,
    ) -> None:
        self.target = target
        self.partitions = partitions
        self.event_loop = event_loop
        self.bootstrap = bootstrap
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, level: str = "warning") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
        env.update(
            CLOUD_ENGINE_DATABASE_URL=self.target.url(),
            CLOUD_ENGINE_DATABASE_SCHEMA=self.target.schema,
            CLOUD_ENGINE_KAFKA_BOOTSTRAP=self.bootstrap,
            CLOUD_ENGINE_TOPIC_PREFIX=TOPIC_PREFIX,
            CLOUD_ENGINE_TOPIC_PARTITIONS=str(self.partitions),
            CLOUD_ENGINE_LOG_LEVEL=level,
            CLOUD_ENGINE_EVENT_LOOP=self.event_loop,
            CLOUD_ENGINE_LOG_FORMAT="console",
        )
        out = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "cloud_engine.runner.cli", *args],
            env=env,
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self._wait_connected(name)

    def _wait_connected(self, name: str, timeout: float = 60) -> None:
        """Until the process talks to the broker, i.e. has finished its
        event-store setup: of two processes running the eventsourcing
        library's CREATE OR REPLACE FUNCTION at the same moment one fails
        ("tuple concurrently updated"), so they start one after another."""
        port = int(self.bootstrap.rsplit(":", 1)[1])
        process = psutil.Process(self.processes[name].pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(psutil.Error):
                if any(c.raddr and c.raddr.port == port for c in process.net_connections("tcp")):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{name} did not connect to the broker in {timeout:.0f}s")

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode}:\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 30) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def warnings(self, name: str) -> int:
        path = self.logs / f"{name}.log"
        return sum("warning" in line or "error" in line for line in path.open(errors="replace"))

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class CpuMeter:
    """CPU seconds (user + system) of named processes between start() and
    stop(), with their exited children (qemu-img; PostgreSQL backends) and,
    for the ones named in `trees`, their live descendants too."""

    def __init__(self, pids: dict[str, int], trees: frozenset[str] = frozenset()) -> None:
        self.pids = pids
        self.trees = trees
        self._at_start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for name, pid in self.pids.items():
            total = 0.0
            try:
                root = psutil.Process(pid)
                family = [root, *(root.children(recursive=True) if name in self.trees else [])]
                for process in family:
                    with contextlib.suppress(psutil.Error):
                        t = process.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
            seconds[name] = total
        return seconds

    def start(self) -> None:
        self._at_start = self.sample()

    def stop(self) -> None:
        end = self.sample()
        self.used = {name: end[name] - self._at_start.get(name, 0.0) for name in end}


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def wait_until(
    what: str, probe: Callable[[], bool], components: Components, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        components.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
