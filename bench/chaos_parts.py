"""bench/chaos.py's parts and setting: the components as processes,
PostgreSQL and the broker, killed and started again as a supervisor would;
where the VMs run (hosts on libvirt's test driver here; chaos_lab's
LabSetting and LabParts add lab hosts)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from chaos_checks import unsettled_vms
from chaos_load import Shape
from deploy_fabric import create_fabric, host_uris

from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.service import CommandService
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
# The components that append to the log (commands, effector results, drift,
# convergence); the relay and the projection worker only carry and derive.
WRITERS = ("api", "engine", "effector", "automation")
PROCESSES = {
    "api": ("api", "--port", "{port}"),
    "relay": ("relay",),
    "projections": ("projections", "run"),
    "engine": ("engine",),
    "effector": ("effector", "--zone", "{zone}"),
    # Convergence settles a VM whose start or stop timed out (unsettled)
    # by what its domain shows; liveness and HA run too (the test driver's
    # hosts always answer, so none goes Suspect).
    "automation": ("automation",),
}
KINDS = (*PROCESSES, "broker", "postgresql")


class Parts:
    """The components as processes, PostgreSQL and the broker: killed and
    started again as a supervisor would."""

    kinds: tuple[str, ...] = KINDS

    def __init__(
        self,
        pg: EmbeddedPostgres,
        broker: DevBroker,
        tmp: Path,
        fmt: dict[str, str],
        commands: dict[str, tuple[str, ...]] | None = None,
    ):
        self.pg, self.broker, self.tmp, self.fmt = pg, broker, tmp, fmt
        self.commands = commands or PROCESSES
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.due: dict[str, float] = {}
        self.restarts = 0  # by the supervisor, beyond the injector's
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
        self.env.update(
            CLOUD_ENGINE_DATABASE_URL=pg.target.url(),
            CLOUD_ENGINE_KAFKA_BOOTSTRAP=broker.bootstrap,
            CLOUD_ENGINE_DATA_DIR=str(tmp),
            CLOUD_ENGINE_LOG_LEVEL="warning",
            CLOUD_ENGINE_LOG_FORMAT="json",
            # Short deadlines: an effector killed mid-step is noticed soon.
            CLOUD_ENGINE_OPERATION_STEP_DEADLINE_S="30",
            CLOUD_ENGINE_OPERATION_SWEEP_S="2",
        )
        # The supervisor's thread and the injector take turns.
        self.lock = threading.RLock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    def supervise(self) -> None:
        """Watch from a thread of its own, living as long as the run (the
        broker's processes die with the thread that started them)."""
        self._thread.start()

    def _supervise(self) -> None:
        while not self._done.wait(0.2):
            with self.lock:
                self.watch()

    def start(self, name: str) -> None:
        args = [a.format(**self.fmt) for a in self.commands[name]]
        with (self.tmp / "logs" / f"{name}.log").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "cloud_engine.runner.cli", *args],
                env=self.env,
                cwd=str(ROOT),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def watch(self) -> None:
        """As systemd's Restart=on-failure: a process that exited (it
        started while PostgreSQL or the broker was down, say) is started
        again, at most once a second; so is the broker."""
        now = time.monotonic()
        # The broker's store gives up when PostgreSQL is gone long enough,
        # and the broker with it (as `up` sees, runner/supervise.py).
        if not self.broker.running() and now >= self.due.get("broker", 0.0):
            self.due["broker"] = now + 1.0
            self.restarts += 1
            try:
                self.broker.restart()
            except Exception as error:  # tried again next time
                print(f"  broker restart failed: {error!r}", flush=True)
        for name, process in list(self.processes.items()):
            if process.poll() is not None and now >= self.due.get(name, 0.0):
                self.due[name] = now + 1.0
                self.restarts += 1
                self.start(name)

    def ready(self, kind: str) -> bool:
        """Whether a fault of this kind can be made now."""
        return True

    def kill(self, kind: str) -> None:
        if kind in self.commands:
            self.processes[kind].kill()
            self.processes[kind].wait()
        elif kind == "broker":
            assert self.broker._process is not None
            self.broker._process.kill()
            self.broker._process.wait()
        else:
            pid = int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)

    def restart(self, kind: str) -> None:
        if kind in self.commands:
            self.start(kind)
        elif kind == "broker":
            self.broker.restart()
        else:
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.pg.restart()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)

    def stop(self, names: tuple[str, ...] | None = None) -> None:
        """Stop the named components (all by default), the supervisor first."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        chosen = [p for n, p in self.processes.items() if names is None or n in names]
        for process in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in chosen:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Setting:
    """Where the VMs run: --hosts hosts on libvirt's test driver (here);
    chaos_lab.LabSetting puts them on lab hosts instead."""

    kinds = KINDS
    shape = Shape()

    def __init__(self, args: argparse.Namespace) -> None:
        self.count = args.hosts

    def fabric(self, service: CommandService, tmp: Path, base_url: str) -> Any:
        """The fabric (zone, template, hosts: their ids) the clients use."""
        uris = host_uris(self.count, tmp / "hosts", False)
        return create_fabric(service, "chaos", uris, tmp, f"{base_url}/tiny.qcow2")

    def parts(
        self, pg: EmbeddedPostgres, broker: DevBroker, tmp: Path, fmt: dict[str, str]
    ) -> Parts:
        return Parts(pg, broker, tmp, fmt)

    def settled(self, target: DatabaseTarget) -> bool:
        """Nothing left for the grace to wait for (the clients' operations
        aside): convergence settles unsettled VMs at the reconciler's next
        round."""
        return unsettled_vms(target) == 0

    def checks(self, aggregates: list[Aggregate]) -> list[str]:
        """Checks of this setting's own, run with the others."""
        return []

    def report(self) -> str:
        return ""

    def close(self) -> None:
        pass
