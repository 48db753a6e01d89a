"""Chaos: kill every part at random under an HTTP workload, then check that
nothing was lost, duplicated or left half-done.

Setup, as bench/deploy.py: an embedded PostgreSQL, the durable dev broker
(its records in PostgreSQL), a zone of --hosts hosts on libvirt's test
driver (one instance per host), a dir pool and a template served over
loopback and fetched by the effector; then each component as its own
`cloud-engine` process: api, relay, projections, engine, effector.

Load: --clients threads, each over HTTP deploying VMs and driving them
through stop, start, migrate (stopped, to another host) and destroy, with
an Idempotency-Key on every command so a retry after a lost answer is the
same command; 503s and refused connections are retried, 409s accepted.
A quarter of their commands (unless --vms-only) are on volumes (create,
attach to a VM, detach) and networks (create, allocate and release an IP,
destroy); the API has no volume destroy.

Faults, seeded (--seed, printed): every --every seconds on average, one
SIGKILL of the api, relay, projections, engine, effector, automation, the
broker or PostgreSQL (its postmaster: a crash, not a clean stop), each
kind once first (in a seeded order), then at random, started again
after 0.3-2 s the way a supervisor would (PostgreSQL on the same socket,
the broker on the same port). Note: the test driver's hypervisors live in
the effector process, so an effector kill is also a reboot of every host
(its domains are gone); the engine's reconciler must bring the record in
line.

After --seconds (or --faults faults), the faults stop; once every
operation the clients started has ended and no VM is unsettled (or --grace
runs out) the components stop and the checks run:
- every operation in the log ended (succeeded, failed or compensated);
- no VM or volume in a transitional state, no VM left unsettled (a start
  or stop that timed out, not yet converged to what its domain shows);
- each host's reservations are exactly the VMs placed on it;
- each pool's reservations are exactly the volumes on it or moving to it
  (a volume in Error left out: it may hold space or not);
- every address of a network is held by one IP at most, and a network's
  allocations are exactly its unreleased IPs;
- each read model equals its rebuild from the log;
- `cloud-engine audit verify` finds the hash chains intact;
- an independent consumer (its own group, from the start) saw every
  event of every aggregate, each aggregate's in order, at least once.
Not checked here: VLAN/VXLAN tags (the networks made are isolation none)
and the domains on the hypervisors (reset by every effector kill).

    python bench/chaos.py [--seconds 120] [--every 8] [--faults N] [--seed N] [--clients 4]

Last line: chaos_faults=<n> chaos_violations=<n> seed=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos_checks import check_everything, unsettled_vms, wait_projected
from deploy_fabric import create_fabric, host_uris, make_template_image, serve

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.broker_retention import Policy
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import load_settings
from cloud_engine.runner.components import broker_database
from cloud_engine.runner.demo import admin_token

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
FINISHED = ("succeeded", "failed", "compensated")


class Parts:
    """The components as processes, PostgreSQL and the broker: killed and
    started again as a supervisor would."""

    def __init__(self, pg: EmbeddedPostgres, broker: DevBroker, tmp: Path, fmt: dict[str, str]):
        self.pg, self.broker, self.tmp, self.fmt = pg, broker, tmp, fmt
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
        args = [a.format(**self.fmt) for a in PROCESSES[name]]
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

    def kill(self, kind: str) -> None:
        if kind in PROCESSES:
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
        if kind in PROCESSES:
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


class Client(threading.Thread):
    """Deploys VMs and drives them through their lifecycle over HTTP."""

    def __init__(
        self,
        n: int,
        api: str,
        token: str,
        fabric: Any,
        hosts: list[str],
        seed: int,
        storage: bool = True,
    ):
        super().__init__(name=f"client-{n}", daemon=True)
        self.storage = storage
        self.n, self.api, self.token, self.fabric, self.hosts = n, api, token, fabric, hosts
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.operations: list[str] = []
        self.vms: dict[str, str] = {}  # id -> the state this client last drove it to
        self.volumes: list[str] = []
        self.networks: list[str] = []
        self.ips: list[str] = []
        self.refused: dict[int, int] = defaultdict(int)
        self.count = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One command, retried on 503 and lost connections with the same
        Idempotency-Key until answered."""
        key = str(uuid.uuid4())
        while True:
            request = urllib.request.Request(f"{self.api}{path}", method=method)
            request.add_header("Authorization", f"Bearer {self.token}")
            if method == "POST":
                request.add_header("Idempotency-Key", key)
            if body is not None:
                request.data = json.dumps(body).encode()
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    return reply.status, json.loads(reply.read() or b"{}")
            except urllib.error.HTTPError as error:
                if error.code not in (502, 503, 504):
                    return error.code, json.loads(error.read() or b"{}")
            except OSError:
                pass  # the API is down: a supervisor starts it again
            time.sleep(0.3)

    def operation(self, method: str, path: str, body: Any = None) -> bool:
        status, reply = self.call(method, path, body)
        self.count += 1
        if status == 202:
            self.operations.append(reply["operation_id"])
            return True
        self.refused[status] += 1
        return False

    def command(self, path: str, body: Any = None) -> str | None:
        """A command that completes once recorded: the resource's id."""
        status, reply = self.call("POST", path, body if body is not None else {})
        self.count += 1
        if status == 202:
            return str(reply["resource_id"])
        self.refused[status] += 1
        return None

    def storage_or_network(self, live: list[str]) -> None:
        """Volumes (create, attach to a VM, detach) and networks (create,
        allocate and release an IP, destroy): refused ones (a VM not
        stopped, a network still holding addresses) are part of the load."""
        action = self.rng.choice(["volume", "attach", "detach", "network", "ip", "release", "drop"])
        if action == "volume":
            body = {"name": f"d{self.n}-{len(self.volumes)}", "zone_id": str(self.fabric.zone)}
            made = self.command("/v1/volumes", {**body, "size_gb": 1, "account": "chaos"})
            if made is not None:
                self.volumes.append(made)
        elif action in ("attach", "detach") and self.volumes and live:
            volume = self.rng.choice(self.volumes)
            body = {"vm_id": self.rng.choice(live)} if action == "attach" else {}
            self.operation("POST", f"/v1/volumes/{volume}/{action}", body)
        elif action == "network" and len(self.networks) < 40:
            cidr = f"10.{100 + self.n}.{len(self.networks)}.0/24"
            body = {"name": f"n{self.n}-{len(self.networks)}", "zone_id": str(self.fabric.zone)}
            made = self.command("/v1/networks", {**body, "cidr": cidr, "isolation": "none"})
            if made is not None:
                self.networks.append(made)
        elif action == "ip" and self.networks:
            made = self.command("/v1/ip-addresses", {"network_id": self.rng.choice(self.networks)})
            if made is not None:
                self.ips.append(made)
        elif action == "release" and self.ips:
            ip = self.ips.pop(self.rng.randrange(len(self.ips)))
            self.command(f"/v1/ip-addresses/{ip}/release")
        elif action == "drop" and self.networks:
            network = self.rng.choice(self.networks)
            if self.command(f"/v1/networks/{network}/destroy") is not None:
                self.networks.remove(network)

    def run(self) -> None:
        while not self.stop.is_set():
            live = [v for v, s in self.vms.items() if s != "destroyed"]
            choice = self.rng.random()
            if self.storage and live and choice > 0.75:
                self.storage_or_network(live)
            elif not live or choice < 0.3:
                body = {
                    "account": "chaos",
                    "name": f"c{self.n}-{len(self.vms)}",
                    "zone_id": str(self.fabric.zone),
                    "template_id": str(self.fabric.template),
                    "spec": {"cpus": 1, "ram_mb": 64, "root_disk_gb": 1},
                }
                status, reply = self.call("POST", "/v1/vms", body)
                self.count += 1
                if status == 202:
                    self.operations.append(reply["operation_id"])
                    self.vms[reply["resource_id"]] = "running"
                else:
                    self.refused[status] += 1
            else:
                vm = self.rng.choice(live)
                action = self.rng.choice(["stop", "start", "migrate", "destroy", "stop"])
                body = {"host_id": self.rng.choice(self.hosts)} if action == "migrate" else {}
                if self.operation("POST", f"/v1/vms/{vm}/{action}", body) and action == "destroy":
                    self.vms[vm] = "destroyed"
            time.sleep(self.rng.uniform(0.05, 0.4))

    def unfinished(self) -> list[str]:
        left = []
        for op in self.operations:
            status, reply = self.call("GET", f"/v1/operations/{op}")
            if status != 200 or reply.get("state") not in FINISHED:
                left.append(op)
        return left


def wait_ready(api: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/readyz", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the API did not get ready")


def inject(
    parts: Parts, rng: random.Random, seconds: float, every: float, most: int | None = None
) -> list[str]:
    """Kill and restart parts until `seconds` have passed or `most` faults
    were made; returns what was killed, in order. The first faults are every
    kind once, in a seeded order, so a short run still covers them all.
    Runs on the main thread: the broker's processes die with the thread
    that started them."""
    faults: list[str] = []
    first = rng.sample(KINDS, len(KINDS))
    end = time.monotonic() + seconds
    while most is None or len(faults) < most:
        pause(parts, rng.uniform(0.5 * every, 1.5 * every))
        if time.monotonic() >= end:
            return faults
        kind = first[len(faults)] if len(faults) < len(first) else rng.choice(KINDS)
        with parts.lock:
            parts.kill(kind)
            faults.append(kind)
            print(f"  {time.strftime('%H:%M:%S')} killed {kind}", flush=True)
            time.sleep(rng.uniform(0.3, 2.0))
            parts.restart(kind)
    return faults


def pause(_parts: Parts, seconds: float) -> None:
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="of faults and load")
    parser.add_argument("--every", type=float, default=8.0, help="mean seconds between faults")
    parser.add_argument("--faults", type=int, default=None, help="stop the faults after this many")
    parser.add_argument("--grace", type=float, default=120.0, help="for operations to end")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--vms-only", action="store_true", help="no volume and network commands in the load"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    started = time.monotonic()
    marks: dict[str, float] = {}
    print(f"seed={seed} load average {os.getloadavg()[0]:.2f}", flush=True)
    configure_logging("console", "error")
    # Its reconnection attempts while the broker is down, by the hundred.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="cloud-engine-chaos-"))
    (tmp / "logs").mkdir()
    make_template_image(tmp / "www")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp)))
    broker = DevBroker(
        log_file=tmp / "logs" / "broker.log",
        database=broker_database(pg.target),
        state_dir=tmp,
        # Retention off: the watcher checks every event from the first one,
        # and joins after the fabric's events were read by everyone else.
        retention=Policy(retention_s=0),
    )
    broker.start()
    violations: list[str] = []
    faults: list[str] = []
    restarts = 0
    parts: Parts | None = None
    try:
        store = EventStore(pg.target)
        with serve(tmp / "www") as base_url:
            service = CommandService(store)
            uris = host_uris(args.hosts, tmp / "hosts", False)
            fabric = create_fabric(service, "chaos", uris, tmp, f"{base_url}/tiny.qcow2")
            token = asyncio.run(admin_token(pg.target, tmp))
            port = free_port()
            parts = Parts(pg, broker, tmp, {"port": str(port), "zone": str(fabric.zone)})
            for name in PROCESSES:
                parts.start(name)
            parts.supervise()
            api = f"http://127.0.0.1:{port}"
            wait_ready(api)
            # Asked once the read models hold the fabric: the effector reads
            # the zone's image store there (on a loaded machine the worker
            # can still be behind when the effector takes the work).
            if not asyncio.run(wait_projected(pg.target, store.max_position(), timeout=120)):
                raise TimeoutError("the read models did not catch up with the fabric")
            service.execute(RequestTemplateDownload(template_id=fabric.template))
            service.close()
            wait_template(store, fabric.template)
            hosts = [str(h) for h in fabric.hosts]
            clients = [
                Client(n, api, token, fabric, hosts, rng.randrange(1 << 31), not args.vms_only)
                for n in range(args.clients)
            ]
            consumer = Watcher(broker.bootstrap)
            consumer.start()
            began = marks["load"] = time.monotonic()
            for client in clients:
                client.start()
            faults = inject(parts, rng, args.seconds, args.every, args.faults)
            marks["faults stopped"] = time.monotonic()
            for client in clients:
                client.stop.set()
            for client in clients:
                client.join(60)
            refused: dict[int, int] = defaultdict(int)
            for client in clients:
                for status, n in client.refused.items():
                    refused[status] += n
            print(
                f"{sum(c.count for c in clients)} commands from {len(clients)} clients in"
                f" {time.monotonic() - began:.0f} s; refused: {dict(refused)}"
            )
            deadline = time.monotonic() + args.grace
            left = [op for c in clients for op in c.unfinished()]
            while left and time.monotonic() < deadline:
                pause(parts, 2)
                left = [op for c in clients for op in c.unfinished()]
            if left:
                violations.append(f"{len(left)} operations did not end: {left[:5]}")
            # Convergence settles them at the reconciler's next round.
            while unsettled_vms(pg.target) and time.monotonic() < deadline:
                pause(parts, 2)
            marks["grace over"] = time.monotonic()
            # The writers first: the effector's reconciler and automation go on
            # recording (drift, convergence), so an end of the log taken while
            # they run can be passed before the projection worker is stopped,
            # and its read models then differ from their rebuild (a CI
            # rehearsal saw it). With them stopped, the end is final.
            parts.stop(WRITERS)
            if not asyncio.run(wait_projected(pg.target, store.max_position())):
                violations.append("the read models did not catch up with the log")
            parts.stop()
            restarts = parts.restarts
            marks["checks"] = time.monotonic()
            violations += check_everything(store, pg.target, parts.env, consumer)
            consumer.stop()
            store.close()
    finally:
        if parts is not None:
            parts.stop()
        broker.stop()
        pg.stop()
        if args.keep or violations:
            print(f"data and logs kept in {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    took = time.monotonic() - started
    phases, last = [], 0.0
    for name, at in marks.items():  # in the order they were reached
        last = at - started
        phases.append(f"{name} at {last:.0f} s")
    print(
        f"run took {took:.0f} s ({', '.join(phases)}; checks {took - last:.0f} s);"
        f" load average now {os.getloadavg()[0]:.2f}"
    )
    by_kind = {k: faults.count(k) for k in KINDS}
    print(f"faults by part: {by_kind}; processes restarted by the supervisor: {restarts}")
    for violation in violations:
        print(f"VIOLATION: {violation}")
    print(f"chaos_faults={len(faults)} chaos_violations={len(violations)} seed={seed}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_template(store: EventStore, template: uuid.UUID, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while getattr(store.load(template), "state", "") != "Ready":
        if time.monotonic() > deadline:
            raise TimeoutError("the template was not downloaded")
        time.sleep(0.2)


class Watcher:
    """The independent consumer: its own group, every events topic from the
    start, recording each aggregate's versions in the order received."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.seen: dict[str, list[int]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._consume())

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        from cloud_engine.bus.cloudevents import from_record
        from cloud_engine.bus.naming import topic_for
        from cloud_engine.engine.catalog import AGGREGATES

        consumer = AIOKafkaConsumer(
            *(topic_for("cloudengine", name) for name in AGGREGATES),
            bootstrap_servers=self.bootstrap,
            group_id=f"chaos-watcher-{uuid.uuid4()}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = from_record(record.headers, record.value)
                        self.seen[event.subject].append(event.aggregate_version)
        finally:
            await consumer.stop()

    def caught_up(self, want: dict[str, int], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            max(self.seen.get(a, [0])) < v for a, v in want.items()
        ):
            time.sleep(0.5)


if __name__ == "__main__":
    main()
