"""HA recovery on lab hosts (issue 21): a host's power cut -> every HA VM
of it running again on another host.

An embedded PostgreSQL and the dev broker, every component as its own
`cloud-engine` process (relay, projections, engine, effector with its
defaults, automation fencing lab hosts by a power cut, `--up-after 2`).
The fabric of bench/migrate.py (3 lab hosts, cpu_overcommit 4, a shared
cluster pool, a 4 MiB template, a VXLAN network). Each run deploys 3
HA-enabled idle VMs (1 vCPU, 128 MiB, TCG, nothing boots: SeaBIOS idles)
on the next host in turn, cuts that host's power (Lab.power_off: every
QEMU and its libvirtd die at once) and times, from the cut, until every
one of the 3 is recorded Running on another host and its domain runs
there (checked on every libvirtd). The parts come from the host's events
(suspected, down, fenced: stamped by the committing process) and the VMs'
(placed: the start asked of the effector on the chosen host; started).
The host is then powered on with its disk and waits to be Up again (not
timed) before the next run.

Baseline from the same run: a `vm.start` of one of those VMs stopped on a
healthy host (the restart step alone, without detection and fencing).

Then the maintenance drain of bench/drain.py on a lab of its own (a host
with 4 idle VMs drained into Maintenance, against 4 raw migrations),
--drain-runs times.

    python bench/ha.py [--runs 5] [--drain-runs 3]

Last line: ha_recovery_s=<p50> drain_s=<p50>
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt
from deploy_fabric import make_template_image, serve
from deploy_processes import Components, wait_until
from drain import run as run_drains
from migrate import fabric, finished, stamp

from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.commands.hosts import UpdateHostOvercommit
from cloud_engine.engine.commands.operations import DeployVm, VmOperation
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import load_settings
from cloud_engine.lab.lab import Lab
from cloud_engine.lab.model import LabHost

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def running_on(hosts: list[LabHost], vm_id: uuid.UUID) -> list[str]:
    found = []
    for h in hosts:
        try:
            conn = libvirt.open(h.uri)
        except libvirt.libvirtError:
            continue
        try:
            dom = conn.lookupByUUIDString(str(vm_id))
            if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                found.append(h.name)
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()
    return found


def host(store: EventStore, host_id: uuid.UUID) -> Host:
    found = store.load(host_id)
    assert isinstance(found, Host)
    return found


def vm(store: EventStore, vm_id: uuid.UUID) -> VirtualMachine:
    found = store.load(vm_id)
    assert isinstance(found, VirtualMachine)
    return found


def recovered(
    store: EventStore,
    vms: list[uuid.UUID],
    victim_id: uuid.UUID,
    others: list[LabHost],
    names: dict[uuid.UUID, str],
) -> bool:
    """Every VM recorded Running off the victim, its domain running on that
    host and on no other."""
    for v in vms:
        record = vm(store, v)
        if record.state != "Running" or record.host_id in (None, victim_id):
            return False
        if running_on(others, v) != [names[record.host_id]]:
            return False
    return True


def is_up(store: EventStore, host_id: uuid.UUID) -> bool:
    return host(store, host_id).liveness == "Up"


def last(store: EventStore, aggregate_id: uuid.UUID, name: str) -> float:
    return max(stamp(e) for e in store.events_of(aggregate_id) if type(e).__name__ == name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--drain-runs", type=int, default=3)
    args = parser.parse_args()
    configure_logging("console", "warning")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="cebh-", dir="/tmp"))  # socket paths stay short
    try:
        recoveries, baseline = run(tmp, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p99 = statistics.quantiles(recoveries, n=100, method="inclusive")[98]
    print(
        f"HA recovery over {len(recoveries)} runs: p50 {statistics.median(recoveries):.2f} s,"
        f" p99 {p99:.2f} s, max {max(recoveries):.2f} s; baseline vm.start"
        f" p50 {statistics.median(baseline):.2f} s"
    )
    tmp = Path(tempfile.mkdtemp(prefix="cebd-", dir="/tmp"))
    try:
        drains, raws = run_drains(tmp, args.drain_runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"drain over {len(drains)} runs: p50 {statistics.median(drains):.2f} s;"
        f" baseline 4 raw migrations p50 {statistics.median(raws):.2f} s"
    )
    print(
        f"ha_recovery_s={statistics.median(recoveries):.2f} drain_s={statistics.median(drains):.2f}"
    )


def run(tmp: Path, runs: int) -> tuple[list[float], list[float]]:
    lab = Lab(tmp / "lab")
    hosts = lab.up(3)
    make_template_image(tmp / "www")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp / "pg")))
    broker = DevBroker(log_file=tmp / "broker.log")
    bootstrap = broker.start()
    store = EventStore(pg.target)
    service = CommandService(store)
    logs = tmp / "logs"
    logs.mkdir()
    components = Components(pg.target, bootstrap, logs)
    recoveries: list[float] = []
    baseline: list[float] = []
    try:
        with serve(tmp / "www") as base_url:
            ids = fabric(service, hosts, tmp, base_url)
            names = {ids[h.name]: h.name for h in hosts}
            for h in hosts:
                service.execute(
                    UpdateHostOvercommit(
                        host_id=ids[h.name], cpu_overcommit=4.0, ram_overcommit=1.0
                    )
                )
            for name in ("relay", "projections", "engine", "effector"):
                components.start(name, name, *(["run"] if name == "projections" else []))
            components.start(
                "automation", "automation", "--lab-state", str(tmp / "lab"), "--up-after", "2",
                level="info",
            )  # fmt: skip
            service.execute(RequestTemplateDownload(template_id=ids["template"]))
            wait_until(
                "the template downloaded",
                lambda: getattr(store.load(ids["template"]), "state", "") == "Ready",
                components,
                120,
            )
            for n in range(runs):
                victim = hosts[n % len(hosts)]
                victim_id = ids[victim.name]
                vms = []
                for i in range(3):
                    deployed = service.execute(
                        DeployVm(
                            account="bench", name=f"ha-{n}-{i}", zone_id=ids["zone"],
                            template_id=ids["template"],
                            spec=VmSpec(cpus=1, ram_mb=128, root_disk_gb=1),
                            network_ids=(ids["network"],), host_id=victim_id, ha=True,
                            ha_priority=i, strategy="dispersing",
                        )
                    )  # fmt: skip
                    finished(store, deployed.aggregate_id, components)
                    vms.append(uuid.UUID(str(deployed.value)))
                time.sleep(1.0)
                cut = time.time()
                lab.power_off(victim.name)
                others = [h for h in hosts if h.name != victim.name]

                wait_until(
                    "HA VMs running elsewhere",
                    functools.partial(recovered, store, vms, victim_id, others, names),
                    components,
                    180,
                )
                done = max(last(store, v, "Started") for v in vms)
                took = done - cut
                recoveries.append(took)
                suspected = last(store, victim_id, "Suspected") - cut
                down = last(store, victim_id, "Down") - cut
                fenced = last(store, victim_id, "Fenced") - cut
                # Placed: the planner chose a host and asked the effector to
                # start (the VM's StartRequested), for the last of the 3.
                placed = max(last(store, v, "StartRequested") for v in vms) - cut
                print(
                    f"run {n + 1} ({victim.name}): {took:.2f} s (suspected {suspected:.2f},"
                    f" down {down:.2f}, fenced {fenced:.2f}, placed {placed:.2f},"
                    f" VMs started {took:.2f})"
                )
                lab.power_on(victim.name, wipe=False)
                wait_until(
                    f"{victim.name} Up again",
                    functools.partial(is_up, store, victim_id),
                    components,
                    120,
                )
            # Baseline: the restart step alone, on healthy hosts.
            for v in vms:
                stop = service.execute(VmOperation(kind="vm.stop", vm_id=v, forced=True))
                finished(store, stop.aggregate_id, components)
                began = time.time()
                start = service.execute(VmOperation(kind="vm.start", vm_id=v))
                finished(store, start.aggregate_id, components)
                baseline.append(last(store, v, "Started") - began)
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
        lab.down(wipe=True)
        subprocess.run(["rm", "-rf", str(tmp / "pg")], check=False)
    return recoveries, baseline


if __name__ == "__main__":
    main()
