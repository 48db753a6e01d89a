"""Soak: steady deploy/destroy churn over HTTP at half the measured maximum
rate for --minutes; memory of every component, latency per window, and the
event store's growth per VM lifecycle.

Setup, as bench/deploy.py and bench/chaos.py: an embedded PostgreSQL, the
durable dev broker (its records in PostgreSQL), a zone of --hosts hosts on
libvirt's test driver (one instance per host), a dir pool and a template
served over loopback and fetched by the effector; each component as its own
`cloud-engine` process: api, relay, projections, engine, effector.

A lifecycle: POST /v1/vms, wait for its operation to succeed (Running),
then destroy, wait, expunge, wait (gone). Operations are polled over HTTP
every POLL_S; a latency is from just before the POST (wall clock) to the
operation's `modified_on` (its last event, stamped by the engine), so
polling adds nothing to it.

Calibration (the baseline, same run): --calibrate-clients clients each
running lifecycles back to back for --calibrate-seconds: the maximum
lifecycle rate. The soak then starts one lifecycle every 1/(max/2) s (or
--rate), each on a pool of --live workers, so at most --live VMs exist at
once and capacity never runs out.

Measured: deploy request->Running and destroy p50/p99 per --window-minutes
window, and the least-squares slope of the per-window p99 in % of its mean
per window (the trend); VmRSS of every process (/proc/<pid>/status) every
10 s: growth = median of the last minute of the run vs median of the last
minute of the first window (the warm-up); the events table
(pg_total_relation_size) and the databases' size per lifecycle. PostgreSQL's
RSS (postmaster and backends, summed) counts shared buffers as they are
touched, so it is printed but not in the growth key.

    python bench/soak.py [--minutes 30] [--window-minutes 5] [--hosts 40]

Last line: soak_rss_growth_pct=<x> soak_p99_trend_pct=<x> ... soak_stalled_windows=<n>
(windows in which no lifecycle started and completed: the pipeline stalled)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from api_http import call
from deploy_fabric import create_fabric, host_uris, make_template_image, serve
from deploy_processes import Components, postmaster_pid, wait_until

from cloud_engine.bus.broker import DevBroker
from cloud_engine.bus.broker_retention import Policy
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.pg import connect
from cloud_engine.infra.settings import load_settings
from cloud_engine.infra.tables import events_table
from cloud_engine.runner.components import broker_database
from cloud_engine.runner.demo import admin_token

FINISHED = ("succeeded", "failed", "compensated")
# Between polls of an operation. The latencies come from the operation's own
# timestamps, so this only sets how soon the next step starts; polling
# faster costs the API (and the two shared cores) hundreds of GETs a second.
POLL_S = 0.5
NAMES = ("api", "relay", "projections", "engine", "effector", "broker", "broker store")


class SoakComponents(Components):
    """The API does not talk to the broker: it is ready when /readyz says so."""

    def _wait_connected(self, name: str, timeout: float = 60) -> None:
        if name != "api":
            super()._wait_connected(name, timeout)


class Lifecycle(NamedTuple):
    start: float  # time.monotonic() when its deploy was submitted
    outcome: str
    deploy_s: float = 0.0
    destroy_s: float = 0.0
    expunge_s: float = 0.0


class Api:
    def __init__(self, base: str, token: str, zone: str, template: str) -> None:
        self.base, self.token, self.zone, self.template = base, token, zone, template

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return call(method, f"{self.base}{path}", self.token, body, timeout=60)

    def operation(self, path: str, body: Any) -> tuple[str, float, dict[str, Any]]:
        """Submit; wait for the operation to end; (its state, seconds from
        just before the submission to its last event, the 202's body)."""
        began = time.time()
        status, reply = self.call("POST", path, body)
        if status != 202:
            return f"refused {status}", 0.0, {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            status, view = self.call("GET", f"/v1/operations/{reply['operation_id']}")
            if status == 200 and view.get("state") in FINISHED:
                ended = datetime.fromisoformat(view["modified_on"]).timestamp()
                return str(view["state"]), ended - began, reply
        return "timed out", 0.0, reply

    def lifecycle(self, n: int) -> Lifecycle:
        """Deploy (Running), destroy, expunge (gone), each awaited."""
        start = time.monotonic()
        body = {
            "account": "soak",
            "name": f"s{n}",
            "zone_id": self.zone,
            "template_id": self.template,
            "spec": {"cpus": 1, "ram_mb": 64, "root_disk_gb": 1},
            # The default, first-fit, stacks every VM on the first host, and
            # one host's work is done in order: a 30-minute backlog.
            "strategy": "dispersing",
        }
        state, deploy, reply = self.operation("/v1/vms", body)
        if state != "succeeded":
            return Lifecycle(start, f"deploy {state}")
        vm = reply["resource_id"]
        state, destroy, _ = self.operation(f"/v1/vms/{vm}/destroy", {})
        if state != "succeeded":
            return Lifecycle(start, f"destroy {state}", deploy)
        state, expunge, _ = self.operation(f"/v1/vms/{vm}/expunge", {})
        outcome = "ok" if state == "succeeded" else f"expunge {state}"
        return Lifecycle(start, outcome, deploy, destroy, expunge)


class Memory(threading.Thread):
    """VmRSS of each process every `every` seconds: (seconds since start,
    {name: MiB})."""

    def __init__(self, pids: dict[str, int], tree: int, every: float = 10.0) -> None:
        super().__init__(name="rss", daemon=True)
        self.pids, self.tree, self.every = pids, tree, every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.began = time.monotonic()
        self.done = threading.Event()

    def sample(self) -> dict[str, float]:
        rss = {name: vm_rss(pid) for name, pid in self.pids.items()}
        total = 0.0
        try:
            root = psutil.Process(self.tree)
            for p in (root, *root.children(recursive=True)):
                total += vm_rss(p.pid)
        except psutil.Error:
            pass
        rss["postgres (all)"] = total
        rss["load1"] = os.getloadavg()[0]
        return rss

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic() - self.began, self.sample()))
            self.done.wait(self.every)


def vm_rss(pid: int) -> float:
    """MiB, from /proc/<pid>/status; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def calibrate(api: Api, clients: int, seconds: float) -> tuple[float, list[Lifecycle]]:
    """Lifecycles back to back from `clients` threads: lifecycles/s."""
    done: list[Lifecycle] = []
    end = time.monotonic() + seconds
    counter = iter(range(1 << 30))

    def loop() -> None:
        while time.monotonic() < end:
            done.append(api.lifecycle(next(counter)))

    began = time.monotonic()
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done) / (time.monotonic() - began), done


def soak(api: Api, rate: float, seconds: float, live: int, tick: Any) -> list[Lifecycle]:
    """One lifecycle started every 1/rate s on `live` workers for `seconds`;
    `tick()` is called about once a second (the progress line)."""
    pool = ThreadPoolExecutor(max_workers=live)
    futures = []
    began = time.monotonic()
    n = 0
    last = began
    while (now := time.monotonic()) < began + seconds:
        due = began + n / rate
        if now < due:
            time.sleep(min(due - now, 1.0))
        else:
            futures.append(pool.submit(api.lifecycle, 1_000_000 + n))
            n += 1
        if now - last >= 1.0:
            last = now
            tick(sum(not f.done() for f in futures))
    # Lifecycles still queued when the time is up (the pipeline fell behind)
    # are not started: a backlog would otherwise take as long again to drain.
    pool.shutdown(wait=True, cancel_futures=True)
    return [f.result() for f in futures if not f.cancelled()]


async def sizes(target: DatabaseTarget) -> tuple[int, int, int]:
    """(events table bytes, its rows, bytes of every database on the server)."""
    conn = await connect(target)
    try:
        table = events_table(target.schema)
        events = await conn.fetchval(f"SELECT pg_total_relation_size('{table}')")
        rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
        total = await conn.fetchval("SELECT sum(pg_database_size(datname)) FROM pg_database")
        return int(events), int(rows), int(total)
    finally:
        await conn.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slope_pct(values: list[float]) -> float:
    """Least-squares slope of values over their index, in % of their mean."""
    if len(values) < 2:
        return 0.0
    xs = range(len(values))
    mx, my = statistics.mean(xs), statistics.mean(values)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return 100 * slope / my


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def median_between(memory: Memory, name: str, start: float, end: float) -> float:
    values = [rss[name] for t, rss in memory.samples if start <= t <= end]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window-minutes", type=float, default=5.0)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--calibrate-seconds", type=float, default=25.0)
    parser.add_argument("--calibrate-clients", type=int, default=16)
    parser.add_argument("--rate", type=float, default=None, help="lifecycles/s (default: max/2)")
    parser.add_argument("--live", type=int, default=64, help="lifecycles (VMs) at once at most")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument(
        "--broker-storage", choices=("postgres", "memory"), default="postgres",
        help="the dev broker's records: in PostgreSQL as `up` keeps them, or in memory",
    )  # fmt: skip
    parser.add_argument(
        "--broker-retention-s", type=float, default=Policy().retention_s,
        help="the durable broker's retention (0: keep every batch)",
    )  # fmt: skip
    args = parser.parse_args()
    configure_logging("console", "error")
    print(
        f"load average at start: {load()}; broker storage {args.broker_storage},"
        f" retention {args.broker_retention_s} s",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="cloud-engine-soak-"))
    logs = tmp / "logs"
    logs.mkdir()
    make_template_image(tmp / "www")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp)))
    durable = args.broker_storage == "postgres"
    broker = DevBroker(
        log_file=logs / "broker.log",
        database=broker_database(pg.target) if durable else None,
        state_dir=tmp,
        retention=Policy(retention_s=args.broker_retention_s),
    )
    bootstrap = broker.start()
    components = SoakComponents(pg.target, bootstrap, logs)
    store = EventStore(pg.target)
    try:
        with serve(tmp / "www") as base_url:
            service = CommandService(store)
            uris = host_uris(args.hosts, tmp / "hosts", False)
            fabric = create_fabric(service, "soak", uris, tmp, f"{base_url}/tiny.qcow2")
            token = asyncio.run(admin_token(pg.target, tmp))
            port = free_port()
            api = Api(f"http://127.0.0.1:{port}", token, str(fabric.zone), str(fabric.template))
            components.start("api", "api", "--port", str(port))
            wait_until("the API ready", lambda: ready(api), components, 120)
            components.start("relay", "relay")
            components.start("projections", "projections", "run")
            components.start("engine", "engine")
            components.start("effector", "effector", "--zone", str(fabric.zone))
            service.execute(RequestTemplateDownload(template_id=fabric.template))
            wait_until(
                "the template downloaded",
                lambda: getattr(store.load(fabric.template), "state", "") == "Ready",
                components,
                120,
            )
            service.close()
            pids = {n: p.pid for n, p in components.processes.items()}
            pids["broker"] = broker._process.pid if broker._process else -1
            # The durable broker's records go through a Python process of its own.
            if durable:
                pids["broker store"] = next(
                    (
                        c.pid
                        for c in psutil.Process().children()
                        if "broker_store" in " ".join(c.cmdline())
                    ),
                    -1,
                )
            memory = Memory(pids, postmaster_pid(tmp))
            memory.start()
            time.sleep(1)
            started_rss = memory.samples[0][1]
            print("RSS right after start (MiB): " + rss_line(started_rss), flush=True)
            max_rate, burst = calibrate(api, args.calibrate_clients, args.calibrate_seconds)
            bad = [c.outcome for c in burst if c.outcome != "ok"]
            print(
                f"calibration: {args.calibrate_clients} clients back to back for"
                f" {args.calibrate_seconds:.0f} s: {max_rate:.2f} lifecycles/s"
                f" ({len(burst)}, not ok: {len(bad)}); deploy p50/p99"
                f" {percentile([c.deploy_s for c in burst if c.outcome == 'ok'], 0.5):.0f}/"
                f"{percentile([c.deploy_s for c in burst if c.outcome == 'ok'], 0.99):.0f} ms",
                flush=True,
            )
            rate = args.rate or max_rate / 2
            before = asyncio.run(sizes(pg.target))
            seconds = 60 * args.minutes
            window = 60 * args.window_minutes
            print(f"soak: {rate:.2f} lifecycles/s for {args.minutes:g} min", flush=True)
            soak0 = time.monotonic() - memory.began
            began = time.monotonic()

            shown = [began]

            def tick(in_flight: int) -> None:
                components.check()
                elapsed = time.monotonic() - began
                if time.monotonic() - shown[0] >= 60:
                    shown[0] = time.monotonic()
                    print(
                        f"  {elapsed / 60:4.1f} min: {in_flight} in flight, load {load()}",
                        flush=True,
                    )

            lifecycles = soak(api, rate, seconds, args.live, tick)
            soak_end = time.monotonic() - memory.began
            after = asyncio.run(sizes(pg.target))
            memory.done.set()
            memory.join()
            warnings = {n: components.warnings(n) for n in components.processes}
    except BaseException:
        for name in components.processes:
            print(f"--- {name} log (tail) ---\n{components.tail(name)}", file=sys.stderr)
        raise
    finally:
        components.stop()
        store.close()
        broker.stop()
        pg.stop()
        if args.keep:
            print(f"data and logs kept in {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(f"load average at end: {load()} (other work on the machine varies during the run)")
    print(f"warning/error log lines: {warnings}")
    ok = [c for c in lifecycles if c.outcome == "ok"]
    failed = [c.outcome for c in lifecycles if c.outcome != "ok"]
    print(
        f"{len(lifecycles)} lifecycles started of {round(rate * seconds)} due (the rest queued"
        f" behind the pool of {args.live} when the time was up), {len(ok)} ok;"
        f" not ok: {failed[:10]}"
    )
    windows = max(1, round(seconds / window))
    print(
        f"per {args.window_minutes:g}-minute window (ms; a lifecycle counts in the window"
        " its deploy was submitted in):"
    )
    print("  window  lifecycles  deploy p50   p99  destroy p50   p99  expunge p99  load1")
    deploy_p99: list[float] = []
    destroy_p99: list[float] = []
    for w in range(windows):
        lo, hi = began + w * window, began + (w + 1) * window
        inside = [c for c in ok if lo <= c.start < hi]
        d = [c.deploy_s for c in inside]
        x = [c.destroy_s for c in inside]
        deploy_p99.append(percentile(d, 0.99))
        destroy_p99.append(percentile(x, 0.99))
        m0, m1 = lo - memory.began, hi - memory.began
        loads = [s["load1"] for t, s in memory.samples if m0 <= t < m1]
        print(
            f"  {w + 1:6d}  {len(inside):10d}  {percentile(d, 0.5):10.0f} {deploy_p99[-1]:5.0f}"
            f"  {percentile(x, 0.5):11.0f} {destroy_p99[-1]:5.0f}"
            f"  {percentile([c.expunge_s for c in inside], 0.99):11.0f}"
            f"  {statistics.mean(loads) if loads else float('nan'):5.2f}"
        )
    # A window in which no lifecycle that started completed has no p99: the
    # pipeline stalled there (every worker waiting), the worst trend of all.
    # The slope is taken over the windows that have one; the stall is counted.
    stalled = sum(1 for p in deploy_p99 if math.isnan(p))
    deploy_trend = slope_pct([p for p in deploy_p99 if not math.isnan(p)])
    destroy_trend = slope_pct([p for p in destroy_p99 if not math.isnan(p)])
    print(
        f"p99 trend (least-squares slope per window, % of the mean): deploy {deploy_trend:+.1f} %,"
        f" destroy {destroy_trend:+.1f} %; windows with no lifecycle completed: {stalled}"
    )
    print("RSS (MiB): after start, after warm-up (last minute of window 1), end (last minute):")
    growth: dict[str, float] = {}
    for name in [*NAMES, "postgres (all)"]:
        if name not in started_rss:  # no broker store with --broker-storage memory
            continue
        warm = median_between(memory, name, soak0 + window - 60, soak0 + window)
        end = median_between(memory, name, soak_end - 60, soak_end)
        pct = 100 * (end - warm) / warm
        if name in NAMES:
            growth[name] = pct
        print(
            f"  {name:<15} {started_rss[name]:7.1f} {warm:7.1f} {end:7.1f}  {pct:+6.1f} %"
            + ("" if name in NAMES else "  (shared buffers as touched; not in the key)")
        )
    worst = max(growth, key=lambda n: growth[n])
    print(f"largest growth: {worst} {growth[worst]:+.1f} %")
    count = max(1, len(ok))
    per = (after[0] - before[0]) / count
    print(
        f"event store over the soak: events table {before[0] / 2**20:.1f} ->"
        f" {after[0] / 2**20:.1f} MiB, {(after[1] - before[1]) / count:.1f} events and"
        f" {per:.0f} bytes per lifecycle; all databases (with the broker's records)"
        f" {(after[2] - before[2]) / count:.0f} bytes per lifecycle"
    )
    print(
        f"soak_rss_growth_pct={growth[worst]:.1f} soak_p99_trend_pct={deploy_trend:.1f}"
        f" soak_destroy_p99_trend_pct={destroy_trend:.1f} soak_bytes_per_lifecycle={per:.0f}"
        f" soak_max_lifecycles_per_s={max_rate:.2f} soak_stalled_windows={stalled}"
    )


def rss_line(rss: dict[str, float]) -> str:
    return ", ".join(f"{n} {v:.1f}" for n, v in rss.items() if n != "load1")


def ready(api: Api) -> bool:
    try:
        with urllib.request.urlopen(f"{api.base}/readyz", timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
