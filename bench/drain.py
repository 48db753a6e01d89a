"""Maintenance drain of a lab host with four idle VMs (issue 21), against
four raw migrations of the same VMs in the same run.

The setup is bench/migrate.py's: the lab's three hosts, an embedded
PostgreSQL and the dev broker, relay, projections, engine and effector as
`cloud-engine` processes, a cluster pool on the lab's shared directory, a
4 MiB template (nothing boots: SeaBIOS idles, so the guests are idle), a
VXLAN network. The drainer (automation/drain.py) runs in this process at
its default interval, as `up` runs it. Four VMs (1 vCPU, 128 MiB, TCG) are
deployed on h1 and moved off and back once untimed (each host's network
is then defined). Then, --runs times:

- baseline: the four VMs moved h1 -> h2/h3 by four vm.migrate operations
  asked at once (the destinations named), timed from the first request to
  the last operation's last event; they are moved back, untimed;
- drain: enter-maintenance on h1 (host.maintenance), timed from the
  request to the operation's last event (the host in Maintenance, every VM
  on h2 or h3); h1 exits maintenance and the VMs go back, untimed.

Needs root and scripts/libvirt-host's packages; everything is made under a
directory of its own in /tmp and removed at the end.

    python bench/drain.py [--runs 3]

Last line: drain_s=<p50> raw_migrations_s=<p50>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy_fabric import make_template_image, serve
from deploy_processes import Components, wait_until
from migrate import fabric, finished, stamp

from cloud_engine.automation.drain import Drainer
from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.commands.fabric import ExitHostMaintenance
from cloud_engine.engine.commands.maintenance import HostOperation
from cloud_engine.engine.commands.operations import DeployVm, VmOperation
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.infra.database import DatabaseTarget, EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import load_settings
from cloud_engine.lab.lab import Lab

VMS = 4


class DrainerThread:
    """The drainer on an event loop of its own, stopped at the end."""

    def __init__(self, service: CommandService, store: EventStore, target: DatabaseTarget):
        self.drainer = Drainer(service, store, target)
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(target=self._run, name="drainer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.drainer.run(self.stop_event))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


def move_all(
    service: CommandService,
    store: EventStore,
    components: Components,
    moves: dict[uuid.UUID, uuid.UUID],
) -> float:
    """All the moves asked at once; seconds to the last one's last event."""
    began = time.time()
    ops = [
        service.execute(VmOperation(kind="vm.migrate", vm_id=vm, host_id=to)).aggregate_id
        for vm, to in moves.items()
    ]
    return max(stamp(store.events_of(finished(store, op, components).id)[-1]) for op in ops) - (
        began
    )


def on(store: EventStore, vm_id: uuid.UUID) -> uuid.UUID | None:
    vm = store.load(vm_id)
    assert isinstance(vm, VirtualMachine)
    return vm.host_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    configure_logging("console", "warning")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="cebd-", dir="/tmp"))  # socket paths stay short
    try:
        drains, raws = run(tmp, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"drain_s={statistics.median(drains):.2f} raw_migrations_s={statistics.median(raws):.2f}")


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
    drainer: DrainerThread | None = None
    drains, raws = [], []
    try:
        with serve(tmp / "www") as base_url:
            ids = fabric(service, hosts, tmp, base_url)
            for name in ("relay", "projections", "engine", "effector"):
                components.start(name, name, *(["run"] if name == "projections" else []))
            drainer = DrainerThread(service, store, pg.target)
            service.execute(RequestTemplateDownload(template_id=ids["template"]))
            wait_until(
                "the template downloaded",
                lambda: getattr(store.load(ids["template"]), "state", "") == "Ready",
                components,
                120,
            )
            deploys = [
                service.execute(
                    DeployVm(
                        account="bench", name=f"idle-{i}", zone_id=ids["zone"],
                        template_id=ids["template"],
                        spec=VmSpec(cpus=1, ram_mb=128, root_disk_gb=1),
                        network_ids=(ids["network"],), host_id=ids["h1"],
                    )
                )
                for i in range(VMS)
            ]  # fmt: skip
            for deployed in deploys:
                finished(store, deployed.aggregate_id, components)
            vms = [uuid.UUID(str(d.value)) for d in deploys]
            time.sleep(1.0)  # past SeaBIOS's first steps: idle guests
            away = {vm: ids["h2" if i % 2 == 0 else "h3"] for i, vm in enumerate(vms)}
            back = dict.fromkeys(vms, ids["h1"])
            move_all(service, store, components, away)  # untimed: networks defined
            move_all(service, store, components, back)
            for n in range(runs):
                raws.append(move_all(service, store, components, away))
                move_all(service, store, components, back)
                began = time.time()
                drain = service.execute(HostOperation(kind="host.maintenance", host_id=ids["h1"]))
                op = finished(store, drain.aggregate_id, components)
                drains.append(stamp(store.events_of(op.id)[-1]) - began)
                assert all(on(store, vm) not in (None, ids["h1"]) for vm in vms)
                print(f"run {n + 1}: drain {drains[-1]:.2f} s, 4 raw migrations {raws[-1]:.2f} s")
                service.execute(ExitHostMaintenance(host_id=ids["h1"]))
                time.sleep(1.0)  # the planner reads h1 Enabled again
                move_all(service, store, components, back)
    except BaseException:
        for name in components.processes:
            print(f"--- {name} log (tail) ---\n{components.tail(name)}", file=sys.stderr)
        raise
    finally:
        if drainer is not None:
            drainer.stop()
        components.stop()
        service.close()
        store.close()
        broker.stop()
        pg.stop()
        lab.down(wipe=True)
        subprocess.run(["rm", "-rf", str(tmp / "pg")], check=False)
    return drains, raws


if __name__ == "__main__":
    main()
