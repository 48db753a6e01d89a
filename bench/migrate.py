"""Live migration through the engine between lab hosts, and lab start-up
(issue 19).

lab up: a new state directory under /tmp, so no QEMU capabilities seed:
Lab.up(3) timed from the call to every libvirtd answering (one host starts
and probes QEMU, the other two start from its cache): lab_up_s. Then down
and up again --warm times (seeded), for the warm figure.

Migration: an embedded PostgreSQL and the dev broker, and every component
as its own `cloud-engine` process (relay, projections, engine, effector),
as bench/deploy.py runs them. The fabric: the lab's three hosts registered
with their libvirt URIs and underlays, a cluster pool on the lab's shared
directory, a file image store, a 4 MiB qcow2 template fetched over loopback
HTTP, a VXLAN network. One VM: 1 vCPU, 128 MiB, TCG, a 1 GiB root volume
backed by the template, one NIC on the VXLAN network; nothing boots (no OS
on the template: SeaBIOS idles), so the guest is idle. It is deployed on h1
and moved h1 -> h2 and back once untimed (each host's network is then
defined), then --moves times h1 <-> h2, one `vm.migrate` operation each
(VmOperation with the destination named, the way an operator asks).

A move's time: from just before its VmOperation is submitted to the
operation's last event (succeeded), stamped by the engine process before
its commit. It is split by the events that end each part: the place step
(operation created -> the VM's MigrationRequested), the effector's part
(-> MigrationCompleted: relay and Kafka delivery, the read models, the
destination's network, libvirt's migration, the DHCP move, the result and
its recording) and the operation's settling (-> succeeded). libvirt's own
call is in the effector's log (migration_done took_s).

Needs root and scripts/libvirt-host's packages; everything is made under a
directory of its own in /tmp and removed at the end.

    python bench/migrate.py [--moves 10] [--warm 3]

Last line: migrate_s=<p50 of the moves> lab_up_s=<cold>
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy_fabric import make_template_image, serve, template_checksum
from deploy_processes import Components, wait_until

from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.commands.fabric import CreateCluster, CreatePod, CreateZone, RegisterHost
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.operations import DeployVm, VmOperation
from cloud_engine.engine.commands.physical_networks import CreatePhysicalNetwork
from cloud_engine.engine.commands.storage import RegisterTemplate, RequestTemplateDownload
from cloud_engine.engine.commands.storage_fabric import CreateImageStore, CreateStoragePool
from cloud_engine.engine.fabric.physical_network import TagRange
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VmSpec
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import load_settings
from cloud_engine.lab.lab import Lab
from cloud_engine.lab.model import LabHost

GiB = 1 << 30


def time_up(lab: Lab) -> float:
    started = time.monotonic()
    lab.up(3)
    return time.monotonic() - started


def lab_start(state: Path, warm: int) -> tuple[float, list[float]]:
    lab = Lab(state)
    try:
        cold = time_up(lab)
        warmed = []
        for _ in range(warm):
            lab.down()
            warmed.append(time_up(lab))
    finally:
        lab.down(wipe=True)
    return cold, warmed


def fabric(
    service: CommandService,
    hosts: list[LabHost],
    tmp: Path,
    base_url: str,
    *,
    account: str = "bench",
    tags: int = 10,
) -> dict[str, uuid.UUID]:
    """The ids by name: zone, template, network, physical_network and each
    host's by its lab name."""
    run = service.execute
    zone = run(CreateZone(name="bench")).aggregate_id
    pod = run(
        CreatePod(zone_id=zone, name="p", gateway="10.0.0.1", cidr="10.0.0.0/24")
    ).aggregate_id
    cluster = run(CreateCluster(zone_id=zone, pod_id=pod, name="c")).aggregate_id
    ids = {"zone": zone}
    for h in hosts:
        ids[h.name] = run(
            RegisterHost(
                zone_id=zone, pod_id=pod, cluster_id=cluster, name=h.name, cpu_cores=4,
                ram_mb=2048, libvirt_uri=h.uri, underlay_address=h.address,
                underlay_device=h.underlay_device,
            )
        ).aggregate_id  # fmt: skip
    run(
        CreateStoragePool(
            zone_id=zone, cluster_id=cluster, name="shared", scope="cluster",
            capacity_bytes=64 * GiB, url=str(Path(hosts[0].shared_pool_path) / "bench"),
        )
    )  # fmt: skip
    run(CreateImageStore(zone_id=zone, name="images", url=str(tmp / "images"), protocol="file"))
    ids["template"] = run(
        RegisterTemplate(
            name="tiny", zone_id=zone, url=f"{base_url}/tiny.qcow2", format="qcow2",
            size_bytes=4 << 20, os_type="None", checksum=template_checksum(tmp),
        )
    ).aggregate_id  # fmt: skip
    physical = run(
        CreatePhysicalNetwork(
            zone_id=zone, name="underlay", isolation="VXLAN",
            tag_range=TagRange(first=7000, last=7000 + tags - 1),
        )
    ).aggregate_id  # fmt: skip
    ids["physical_network"] = physical
    ids["network"] = run(
        CreateNetwork(
            account=account, name="overlay", zone_id=zone, cidr="10.70.0.0/24",
            isolation="VXLAN", physical_network_id=physical,
        )
    ).aggregate_id  # fmt: skip
    return ids


def finished(store: EventStore, op_id: uuid.UUID, components: Components) -> Operation:
    wait_until(
        f"operation {op_id}",
        lambda: getattr(store.load(op_id), "finished", False),
        components,
        120,
    )
    op = store.load(op_id)
    assert isinstance(op, Operation)
    if op.status != "succeeded":
        raise RuntimeError(f"operation {op.kind} {op.status}: {op.error}")
    return op


def stamp(event: object) -> float:
    moment: datetime = getattr(event, "timestamp")  # noqa: B009  (every event has one)
    return moment.timestamp()


def move(
    service: CommandService,
    store: EventStore,
    components: Components,
    vm_id: uuid.UUID,
    host_id: uuid.UUID,
) -> tuple[float, float, float, float]:
    """(total, place, effector, settle) in seconds."""
    submitted = time.time()
    op_id = service.execute(VmOperation(kind="vm.migrate", vm_id=vm_id, host_id=host_id))
    op = finished(store, op_id.aggregate_id, components)
    events = store.events_of(vm_id)
    requested = max(stamp(e) for e in events if type(e).__name__ == "MigrationRequested")
    completed = max(stamp(e) for e in events if type(e).__name__ == "MigrationCompleted")
    done = stamp(store.events_of(op.id)[-1])
    return done - submitted, requested - submitted, completed - requested, done - completed


def libvirt_times(log: Path) -> list[float]:
    """migrate3's durations, from the effector's console log lines."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if "migration_done" in line:
            took = re.search(r"took_s=([0-9.]+)", line)
            if took is not None:
                found.append(float(took.group(1)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=10)
    parser.add_argument("--warm", type=int, default=3)
    args = parser.parse_args()
    configure_logging("console", "warning")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    tmp = Path(tempfile.mkdtemp(prefix="cebm-", dir="/tmp"))  # socket paths stay short
    try:
        cold, warmed = lab_start(tmp / "lab-up", args.warm)
        print(f"lab up, 3 hosts: cold {cold:.2f} s; warm {', '.join(f'{w:.2f}' for w in warmed)} s")
        totals = run_moves(tmp, args.moves)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"migrate_s={statistics.median(totals):.2f} lab_up_s={cold:.2f}")


def run_moves(tmp: Path, moves: int) -> list[float]:
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
    try:
        with serve(tmp / "www") as base_url:
            ids = fabric(service, hosts, tmp, base_url)
            for name in ("relay", "projections", "engine"):
                components.start(name, name, *(["run"] if name == "projections" else []))
            # The effector's info lines carry libvirt's own migration times.
            components.start("effector", "effector", level="info")
            service.execute(RequestTemplateDownload(template_id=ids["template"]))
            wait_until(
                "the template downloaded",
                lambda: getattr(store.load(ids["template"]), "state", "") == "Ready",
                components,
                120,
            )
            deployed = service.execute(
                DeployVm(
                    account="bench", name="idle", zone_id=ids["zone"],
                    template_id=ids["template"], spec=VmSpec(cpus=1, ram_mb=128, root_disk_gb=1),
                    network_ids=(ids["network"],), host_id=ids["h1"],
                )
            )  # fmt: skip
            finished(store, deployed.aggregate_id, components)
            vm_id = uuid.UUID(str(deployed.value))
            time.sleep(1.0)  # past SeaBIOS's first steps: an idle guest
            for host in ("h2", "h1"):  # untimed: each host's network defined
                move(service, store, components, vm_id, ids[host])
            samples = []
            for n in range(moves):
                to = "h2" if n % 2 == 0 else "h1"
                samples.append(move(service, store, components, vm_id, ids[to]))
                total, place, effector, settle = samples[-1]
                print(
                    f"move {n + 1} -> {to}: {total:.2f} s (place {place:.2f}, effector"
                    f" {effector:.2f}, settle {settle:.2f})"
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
        lab.down(wipe=True)
        subprocess.run(["rm", "-rf", str(tmp / "pg")], check=False)
    raw = libvirt_times(logs / "effector.log")[-moves:]
    columns = list(zip(*samples, strict=True))
    for label, values in zip(("total", "place", "effector", "settle"), columns, strict=True):
        print(f"{label:>9}: p50 {statistics.median(values):.2f} s, max {max(values):.2f} s")
    if raw:
        print(f"  libvirt: p50 {statistics.median(raw):.2f} s, max {max(raw):.2f} s (migrate3)")
    return list(columns[0])


if __name__ == "__main__":
    main()
