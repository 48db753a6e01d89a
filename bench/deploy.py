"""VM deploys end to end on libvirt's test driver: deploys/s at 100 requests
in flight, request-to-Running latency, and the planner over 10,000 hosts.

Setup. An embedded PostgreSQL and the dev broker (Tansu), as in the other
benches. Every component runs as its own process through its real entry
point, as it would be deployed: `cloud-engine relay`, `cloud-engine
projections run` (read models), `cloud-engine engine` (OperationManager,
which plans with the DeploymentPlanner over the read models and drives each
operation, and the ResultRecorder) and `cloud-engine effector --zone Z`
(EffectorService with its reconciler). This process plays the API: it
submits DeployVm to its own CommandService. The fabric is one zone, pod and
cluster with 40 hosts, a cluster-scope dir pool, a file image store and a
4 MiB qcow2 template served over loopback HTTP and fetched by the effector
(RequestTemplateDownload, not timed). Each VM: 1 vCPU, 64 MiB, a 1 GiB root
volume backed by the template (the effector copies the template into the
pool once as `tpl-<id>.qcow2` and makes a qcow2 overlay per VM), no NICs:
the network driver cannot realise a network on the test driver (it reads
the network's inactive XML, VIR_NETWORK_XML_INACTIVE, which the test driver
refuses). Strategy "dispersing", so the VMs spread over the hosts instead
of stacking on the first ones.

Hosts. By default each host has a libvirt test driver of its own,
`test:///<dir>/host-N.xml` (an empty node): the same in-memory driver as
test:///default, but one instance per host, like real hosts. With
--shared-default every host is `test:///default`, which is one instance per
process shared by all of them: one in-memory storage pool, and the test
driver's pools hold 100 GiB, so at most 99 deploys of 1 GiB in all ("Not
enough free space in pool" after that); and each host's reconciler round
(every 30 s) sees the other hosts' domains, and the driver's built-in
"test" domain, as unknown domains on it.

Timed. 100 concurrent clients each submit a DeployVm and wait until that VM
is Running, then submit the next (100 deploys in flight at every moment,
DEPLOYS in all, after a few untimed warm-up deploys that let every consumer
group join, and 20 deploys made one at a time: the pipeline's latency
without queueing). A deploy's latency is from just before its DeployVm is
submitted (wall clock) to the `ce_time` of the VM's `vm.started` event:
the moment the recorder's MarkVmRunning was written to the event store, in
the engine process, stamped before its commit. A consumer of the vm topic in
this process reads that event (its receive time is reported too).
deploys/s = DEPLOYS / (first submission -> last VM Running). With a fixed
number in flight, latency is that number over the rate (Little's law): 100
in flight at 50 deploys/s is 2 s each. Each deploy's time is also split into
its steps, from the timestamps of the events that end them (operation
created, VM placed, root volume created, VM start requested, VM started).
Afterwards the store is checked: every operation succeeded, every VM
Running, host capacity and pool space exactly accounted.

Baselines, in this process, after the pipeline stopped:
- the command chain: per deploy, the six commands the pipeline stores
  (DeployVm, PlaceOperation on a round-robin host, MarkVolumeCreated,
  AdvanceOperation, MarkVmRunning, AdvanceOperation), each awaited, through
  the same CommandService and database, 100 deploys in flight: what the
  write path alone allows for this workload. The ratio says what the bus,
  the read models, the planner and the effector cost on top;
- the effector's own work per deploy: Executor.run of volume.create
  (template-backed root volume) + vm.start (define and start) in a loop on
  one test driver host, no Kafka, no database.

The planner figure is bench/planner.py's planner_p99_ms() (10,000 hosts,
2,000 pools; the worse strategy's p99), run first, on its own.

CPU seconds of each process (this one, relay, projections, engine,
effector, broker, PostgreSQL) over the timed window are printed: on this
machine they all share two cores.

Nothing is created on libvirtd: the test driver lives in the memory of the
process that opened it (the effector; this process for the baseline, which
removes its domains and pool at the end).

This file parses the options, sets up and reports; the rest is in
bench/deploy_fabric.py (the fabric and the template), deploy_processes.py
(the component processes, CPU seconds), deploy_pipeline.py (the timed runs,
the watcher, the checks) and deploy_baselines.py.

Paced (issue 23's target: p99 <= 500 ms at 25 deploys/s, half the maximum):
after the closed loop, deploys arrive as a Poisson stream of --rate per
second for --paced-seconds (seeded), each submitted at its time whatever
is in flight, so the latency is the pipeline's at that load rather than
the closed loop's number in flight over the rate.

    python bench/deploy.py [--deploys N] [--concurrency C] [--hosts H] [--shared-default]
                           [--rate 25] [--paced-seconds 20] [--seed 1]

Between the two, --idle-seconds with nothing arriving: each process's CPU
(the dev broker's grows with the history the closed loop left when it keeps
it all: --broker-memory-engine tansu).

    python bench/deploy.py [--idle-seconds 10] [--broker-memory-engine store|tansu]

Last line: deploys_per_s=<n, closed loop: the maximum> deploy_p50_ms=<n, paced>
deploy_p99_ms=<n, paced> deploy_closed_p50_ms=<n> deploy_closed_p99_ms=<n>
broker_idle_cores=<x, broker and its store> planner_p99_ms=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

# bench/ (planner.py, deploy_*.py), then the repository root before it: bench/effectors.py
# must not hide the effectors package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy_baselines import command_chain, effector_alone
from deploy_fabric import create_fabric, host_uris, make_template_image, serve
from deploy_pipeline import STEPS, Results, pipeline_run
from deploy_processes import PARTITIONS, Components, CpuMeter, postmaster_pid, wait_until
from planner import planner_p99_ms

from cloud_engine.bus.broker import DEFAULT_MEMORY_ENGINE, DevBroker, MemoryEngine
from cloud_engine.bus.broker_retention import Policy
from cloud_engine.engine.commands.storage import MarkTemplateDownloaded, RequestTemplateDownload
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.template import Template
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import EventLoop, load_settings

HOST_KINDS = {False: "a test driver each", True: "all on one shared test:///default"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deploys", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--single", type=int, default=20, help="deploys made one at a time")
    parser.add_argument(
        "--rate", type=float, default=25,
        help="then deploys arriving at this rate (Poisson), each on its own; 0: skip",
    )  # fmt: skip
    parser.add_argument("--paced-seconds", type=float, default=20)
    parser.add_argument(
        "--idle-seconds", type=float, default=10,
        help="before the paced phase: each process's CPU with nothing arriving",
    )  # fmt: skip
    parser.add_argument(
        "--broker-memory-engine", choices=get_args(MemoryEngine), default=DEFAULT_MEMORY_ENGINE,
        help="the dev broker's memory storage: bus.broker_store (retention) or Tansu's own",
    )  # fmt: skip
    parser.add_argument(
        "--partitions", type=int, default=PARTITIONS,
        help="per topic (each consumer's fetch passes over all its partitions, idle or not)",
    )  # fmt: skip
    parser.add_argument(
        "--broker-retention-s", type=float, default=Policy().retention_s,
        help="with --broker-memory-engine store: its retention period (0: keep all)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="the paced arrivals' seed")
    parser.add_argument("--strategy", choices=["first-fit", "dispersing"], default="dispersing")
    parser.add_argument(
        "--shared-default",
        action="store_true",
        help="every host on test:///default (one shared driver instance; see the docstring)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="print where the logs are kept")
    parser.add_argument(
        "--event-loop", choices=get_args(EventLoop), default="uvloop",
        help="the components' event loop (CLOUD_ENGINE_EVENT_LOOP)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.shared_default and args.warmup + args.single + args.deploys > 95:
        parser.error("--shared-default: one in-memory pool of 100 GiB holds about 95 root volumes")
    configure_logging("console", "warning")

    # Other work on this (2-core) machine shows in the numbers: say how busy it was.
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    planner_ms = planner_p99_ms()
    print(f"planner: p99 {planner_ms:.3f} ms per plan over 10,000 hosts (bench/planner.py)")

    tmp = Path(tempfile.mkdtemp(prefix="cloud-engine-deploy-"))
    make_template_image(tmp / "www")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp)))
    broker = DevBroker(
        log_file=tmp / "broker.log",
        memory_engine=args.broker_memory_engine,
        retention=Policy(retention_s=args.broker_retention_s),
    )
    retention = f", retention {args.broker_retention_s:g}s" if broker.uses_store else ""
    print(f"broker storage: {broker.storage}{retention}")
    bootstrap = broker.start()
    store = EventStore(pg.target)
    service = CommandService(store)
    logs = tmp / "logs"
    logs.mkdir()
    components = Components(pg.target, bootstrap, logs, args.event_loop, args.partitions)
    try:
        with serve(tmp / "www") as base_url:
            template_url = f"{base_url}/tiny.qcow2"
            # The test driver's pools hold 100 GiB each: at most 99 root volumes.
            per_deploy_ms = effector_alone(90, tmp, template_url)
            print(
                f"effector alone: volume.create + vm.start {per_deploy_ms:.2f} ms per deploy"
                f" ({1000 / per_deploy_ms:.0f} deploys/s on one thread)"
            )
            uris = host_uris(args.hosts, tmp / "hosts", args.shared_default)
            fabric = create_fabric(service, "bench", uris, tmp, template_url)
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
            assert isinstance(store.load(fabric.template), Template)
            meter = CpuMeter(
                {
                    "bench (API, watcher)": os.getpid(),
                    **{n: p.pid for n, p in components.processes.items()},
                    "broker": broker._process.pid if broker._process else -1,
                    **({"broker store": broker._store.pid} if broker._store else {}),
                    "postgres": postmaster_pid(tmp),
                },
                trees=frozenset({"postgres"}),
            )
            results = asyncio.run(pipeline_run(args, service, store, components, meter, fabric))
        components.stop()
        # The same commands through the command service alone, on a fabric of
        # their own (nothing consumes them now).
        chain_fabric = create_fabric(
            service, "chain", ["test:///default"] * args.hosts, tmp, "http://127.0.0.1:9/x"
        )
        service.execute(RequestTemplateDownload(template_id=chain_fabric.template))
        service.execute(MarkTemplateDownloaded(template_id=chain_fabric.template))
        results.chain_rate, results.chain_latency = asyncio.run(
            command_chain(service, chain_fabric, args.deploys, args.concurrency)
        )
    except BaseException:
        for name in components.processes:
            print(f"--- {name} log (tail) ---\n{components.tail(name)}", file=sys.stderr)
        raise
    finally:
        components.stop()
        service.close()
        store.close()
        broker.stop()
        pg.stop()
        if args.keep_logs:
            print(f"logs kept in {logs}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    report(args, results, planner_ms, per_deploy_ms)


def print_steps(steps: Sequence[Sequence[float]]) -> None:
    for (label, _), times in zip(STEPS, steps, strict=True):
        print(f"    {label:<52} p50 {ms(times, 0.5):5.0f}  p90 {ms(times, 0.9):5.0f} ms")


def report(
    args: argparse.Namespace, results: Results, planner_ms: float, effector_ms: float
) -> None:
    run = results.run
    rate = len(run.samples) / run.elapsed
    running = [s.running_s for s in run.samples]
    alone = [s.running_s for s in results.single.samples]
    print(f"one deploy at a time ({len(alone)}): request-to-Running {describe(alone)}")
    print_steps(results.single_steps)
    print(
        f"end to end: {len(run.samples)} deploys, {args.concurrency} in flight, over"
        f" {args.hosts} hosts ({HOST_KINDS[args.shared_default]})"
        f" in {run.elapsed:.2f}s: {rate:.1f} deploys/s"
    )
    print(f"  request-to-Running (ce_time of vm.started): {describe(running)}")
    print(f"  DeployVm accepted (committed): {describe([s.accepted_s for s in run.samples])}")
    print(f"  vm.started read by this process: {describe([s.received_s for s in run.samples])}")
    print_steps(results.steps)
    wall = run.elapsed
    cpu = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in results.cpu.items())
    total = sum(results.cpu.values())
    print(
        f"  CPU over the {wall:.1f}s window: {cpu}; total {total:.1f}s"
        f" = {total / wall:.2f} cores of {os.cpu_count()}"
    )
    per = 1000 / len(run.samples)
    print(
        "  CPU per deploy: "
        + ", ".join(f"{name} {per * s:.1f} ms" for name, s in results.cpu.items())
    )
    print(f"  warning/error log lines: {results.warnings}")
    chain = results.chain_latency
    print(
        f"baseline (command chain, same 6 commands, {args.concurrency} in flight, no pipeline):"
        f" {results.chain_rate:.1f} deploys/s; to MarkVmRunning {describe(chain)}"
    )
    print(
        f"ratio end-to-end / baseline: throughput {rate / results.chain_rate:.2f},"
        f" p50 latency {statistics.median(running) / statistics.median(chain):.1f}x"
    )
    print(f"baseline (effector work alone): {effector_ms:.2f} ms per deploy")
    broker_idle = results.idle.get("broker", 0.0) + results.idle.get("broker store", 0.0)
    closed = (
        f"deploy_closed_p50_ms={ms(running, 0.5):.0f} deploy_closed_p99_ms={ms(running, 0.99):.0f}"
        + (f" broker_idle_cores={broker_idle:.2f}" if results.idle else "")
    )
    paced = results.paced
    if paced is None:
        print(f"deploys_per_s={rate:.1f} {closed} planner_p99_ms={planner_ms:.3f}")
        return
    times = [s.running_s for s in paced.samples]
    print(
        f"paced: {len(times)} deploys offered at {args.rate:g}/s (Poisson, seed {args.seed})"
        f" for {args.paced_seconds:g}s, {len(times) / paced.elapsed:.1f}/s achieved"
        f" ({rate / 2:.1f} is half this run's maximum)"
    )
    print(f"  request-to-Running (ce_time of vm.started): {describe(times)}")
    print(f"  DeployVm accepted (committed): {describe([s.accepted_s for s in paced.samples])}")
    print_steps(results.paced_steps)
    print(
        f"deploys_per_s={rate:.1f} deploy_p50_ms={ms(times, 0.5):.0f}"
        f" deploy_p99_ms={ms(times, 0.99):.0f} {closed} planner_p99_ms={planner_ms:.3f}"
    )


def ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(values: Sequence[float]) -> str:
    return (
        f"p50 {ms(values, 0.5):.0f} / p90 {ms(values, 0.9):.0f} / p99 {ms(values, 0.99):.0f}"
        f" / max {1000 * max(values):.0f} ms"
    )


if __name__ == "__main__":
    main()
