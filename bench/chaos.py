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
line. A supervisor thread restarts whatever else exits (chaos_parts.py).

After --seconds (or --faults faults), the faults stop; once every
operation the clients started has ended and no VM is unsettled, at two
looks 2 s apart with the read models at the log's end (or --grace runs
out), the components stop and the checks run:
- every operation in the log ended (succeeded, failed or compensated);
- no VM or volume in a transitional state, no VM left unsettled (a start
  or stop that timed out, not yet converged to what its domain shows);
- each host's reservations are exactly the VMs placed on it;
- each pool's reservations are exactly the volumes on it or moving to it
  (a volume in Error left out: it may hold space or not);
- every address of a network is held by one IP at most, and a network's
  allocations are exactly its unreleased IPs;
- every VLAN/VXLAN tag of a physical network is held by one network at
  most, and its allocations are exactly the tags its networks hold;
- each read model equals its rebuild from the log;
- `cloud-engine audit verify` finds the hash chains intact;
- an independent consumer (its own group, from the start) saw every
  event of every aggregate, each aggregate's in order, at least once.
On the test driver the networks made are isolation none (no tags) and the
hypervisors' domains are not checked (reset by every effector kill).

--lab (bench/chaos_lab.py, root): the VMs on 3 lab hosts instead, idle
TCG QEMUs, each with a NIC on a VXLAN network, half HA-enabled; one more
fault kind, a lab host's power cut (`lab-host`), powered on with its disk
a few seconds later; and two more checks: every lab host Up, and the
domains running on every lab host's libvirtd exactly the VMs the log
records Running there (none missing, none extra, none on two hosts).

    python bench/chaos.py [--seconds 120] [--every 8] [--faults N] [--seed N] [--clients 4]
    python bench/chaos.py --lab [--lab-vms 3] ...

Last line: chaos_faults=<n> chaos_violations=<n> seed=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka.errors import KafkaError
from chaos_checks import check_everything, wait_projected
from chaos_load import Client
from chaos_parts import WRITERS, Parts, Setting
from deploy_fabric import make_template_image, serve

from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import load_settings
from cloud_engine.runner.components import broker_database
from cloud_engine.runner.demo import admin_token


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
    first = rng.sample(parts.kinds, len(parts.kinds))
    end = time.monotonic() + seconds
    while most is None or len(faults) < most:
        pause(parts, rng.uniform(0.5 * every, 1.5 * every))
        if time.monotonic() >= end:
            return faults
        kind = first[len(faults)] if len(faults) < len(first) else rng.choice(parts.kinds)
        if not parts.ready(kind):
            print(f"  {time.strftime('%H:%M:%S')} {kind}: nothing to kill yet, later", flush=True)
            if len(faults) < len(first):  # later in the first round
                first.append(first.pop(len(faults)))
            continue
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
    parser.add_argument("--hosts", type=int, default=4, help="test-driver hosts (lab: 3)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--vms-only", action="store_true", help="no volume and network commands in the load"
    )
    parser.add_argument(
        "--lab", action="store_true", help="VMs on lab hosts (root), a lab host's power cut a fault"
    )
    parser.add_argument("--lab-vms", type=int, default=3, help="live VMs per client on the lab")
    args = parser.parse_args()
    # A SIGTERM (a CI timeout, an operator's kill) unwinds like Ctrl-C: the
    # run's finally stops every part, PostgreSQL and the broker (without it
    # they were left running).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"seed={seed} load average {os.getloadavg()[0]:.2f}", flush=True)
    configure_logging("console", "error")
    # Its reconnection attempts while the broker is down, by the hundred.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    rng = random.Random(seed)
    if args.lab:
        from chaos_lab import LabSetting

        setting: Setting = LabSetting(args, random.Random(rng.randrange(1 << 31)))
    else:
        setting = Setting(args)
    faults, violations, restarts = run(args, setting, rng)
    by_kind = {k: faults.count(k) for k in setting.kinds}
    print(f"faults by part: {by_kind}; processes restarted by the supervisor: {restarts}")
    if setting.report():
        print(setting.report())
    for violation in violations:
        print(f"VIOLATION: {violation}")
    print(f"chaos_faults={len(faults)} chaos_violations={len(violations)} seed={seed}")


def run(
    args: argparse.Namespace, setting: Setting, rng: random.Random
) -> tuple[list[str], list[str], int]:
    """The run: faults made, violations found, restarts by the supervisor."""
    started = time.monotonic()
    marks: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="cloud-engine-chaos-"))
    (tmp / "logs").mkdir()
    make_template_image(tmp / "www")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp)))
    broker = DevBroker(
        log_file=tmp / "logs" / "broker.log",
        database=broker_database(pg.target),
        state_dir=tmp,
        # Retention on, as deployed: the watcher's group joins before any
        # event is published and commits what it has read, so retention
        # keeps every batch it has not seen (a ten-minute run with it off
        # grew the history to the size at which fetches stall the read
        # models: docs/performance.md).
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
            fabric = setting.fabric(service, tmp, base_url)
            token = asyncio.run(admin_token(pg.target, tmp))
            port = free_port()
            parts = setting.parts(pg, broker, tmp, {"port": str(port), "zone": str(fabric.zone)})
            # Before the relay publishes the fabric's first event.
            consumer = Watcher(broker.bootstrap)
            consumer.start()
            consumer.wait_joined()
            for name in parts.commands:
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
                Client(
                    n, api, token, fabric, hosts, rng.randrange(1 << 31), not args.vms_only,
                    setting.shape,
                )
                for n in range(args.clients)
            ]  # fmt: skip
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
            why = sum((c.why for c in clients), Counter[str]())
            print("most refused: " + "; ".join(f"{n}x {w}" for w, n in why.most_common(4)))
            deadline = time.monotonic() + args.grace
            violations.extend(e for c in clients for e in c.errors)
            left = [op for c in clients for op in c.unfinished()]
            while left and time.monotonic() < deadline:
                pause(parts, 2)
                left = [op for c in clients for op in c.unfinished()]
            if left:
                violations.append(f"{len(left)} operations did not end: {left[:5]}")
            # Settled at two looks in a row, 2 s apart, each with the read
            # models at the log's end: one look can fall between two steps
            # still in flight (a drift recorded, convergence's decision not
            # yet; a read model behind the log).
            steady = 0
            while time.monotonic() < deadline:
                end = store.max_position()
                caught_up = asyncio.run(wait_projected(pg.target, end, timeout=10))
                steady = steady + 1 if caught_up and setting.settled(pg.target) else 0
                if steady == 2:
                    break
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
            violations += check_everything(store, pg.target, parts.env, consumer, setting.checks)
            consumer.stop()
            store.close()
    finally:
        if parts is not None:
            parts.stop()
        broker.stop()
        pg.stop()
        setting.close()
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
    return faults, violations, restarts


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
    start, recording each aggregate's versions in the order received. It
    commits what it has read, so the broker's retention keeps the rest."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.seen: dict[str, list[int]] = defaultdict(list)
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_joined(self, timeout: float = 60) -> None:
        if not self._joined.wait(timeout):
            raise TimeoutError("the chaos watcher did not start")

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
        self._joined.set()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = from_record(record.headers, record.value)
                        self.seen[event.subject].append(event.aggregate_version)
                if batch:
                    with contextlib.suppress(KafkaError):
                        # Lost to a broker kill: the next batch commits again.
                        await consumer.commit()
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
