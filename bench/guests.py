"""Deploy request -> a real guest answering HTTP on the engine's address
(issue 20), on lab hosts, with raw libvirt as the baseline.

The engine: an embedded PostgreSQL, the dev broker and every component as
its own `cloud-engine` process (relay, projections, engine, effector), as
bench/migrate.py runs them, on a lab of three hosts. The template is the
tiny-linux guest image (runner/guest_image.py); the VMs have 1 vCPU,
128 MiB, a 1 GiB root volume backed by it and one NIC on a VXLAN network.
Guests run under TCG (this machine's KVM is kvm_pvm, which cannot boot
them: runner/up_hosts.py). A deploy is timed from just before its DeployVm
is submitted to the first answer of the guest's page (its HTTP server, in
the guest) on the address the engine allocated, fetched from the host's
namespace every 0.2 s; the page must list that address. Deploys run one
after another, spread over the hosts; each VM is then powered off (forced
stop, untimed), so only one guest boots at a time.

Baseline, in the same run: the same image copied (qemu-img create with the
image as backing file, as the engine's volumes are) and a domain of the
same XML (effectors/compute/domain_xml.py) defined and started by hand on
h3, on a plain libvirt network with DHCP, timed from define to its page
answering: what the engine adds over the guest's own boot.

Needs root and scripts/libvirt-host's packages; everything is made under a
directory of its own in /tmp and removed at the end.

    python bench/guests.py [--deploys 20] [--baseline 5] [--rules 10]

On a loaded 2-core machine a TCG boot takes about a minute: use fewer
deploys (docs/performance.md ran 8); the count is printed.

Then bench/rules.py runs (rule request -> traffic passing, its own lab)
and its figure joins the last line.

Last line: guest_ready_p50_s=<x> guest_ready_p99_s=<x> rule_active_s=<x>
"""

from __future__ import annotations

import argparse
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
from deploy_fabric import serve
from deploy_processes import Components, wait_until
from migrate import fabric, finished

from cloud_engine.bus.broker import DevBroker
from cloud_engine.effectors.compute.domain_xml import domain_xml
from cloud_engine.effectors.compute.spec import DiskSpec, DomainSpec, NicSpec
from cloud_engine.engine.commands.operations import DeployVm, VmOperation
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.operations.deploy_ids import nic_id
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VmSpec
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import load_settings
from cloud_engine.lab.lab import Lab
from cloud_engine.lab.model import LabHost
from cloud_engine.runner import guest_image

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

WAIT_S = 300.0
POLL_S = 0.2


def answers(host: LabHost, address: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", host.netns, "curl", "-s", "-m", "1", f"http://{address}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and f" {address}/" in done.stdout


def until_answers(host: LabHost, address: str, since: float) -> float:
    while not answers(host, address):
        if time.monotonic() - since > WAIT_S:
            raise RuntimeError(f"no page from {address} on {host.name} in {WAIT_S:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - since


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


BASE_NET = """<network><name>bench-base</name><bridge name='bbr0'/>
<ip address='10.71.0.1' netmask='255.255.255.0'><dhcp><range start='10.71.0.2'
end='10.71.0.254'/><host mac='02:00:0a:47:00:05' ip='10.71.0.5'/></dhcp></ip></network>"""


def baseline(host: LabHost, image: Path, runs: int) -> list[float]:
    conn = libvirt.open(host.uri)
    net = conn.networkDefineXML(BASE_NET)
    net.create()
    disk = Path(host.shared_pool_path) / "bench-base.qcow2"
    took = []
    try:
        for n in range(runs):
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image),
                 str(disk), "1G"],
                check=True,
            )  # fmt: skip
            spec = DomainSpec(
                uuid=uuid.uuid4(), name=f"bench-base-{n}", vcpus=1, memory_mb=128,
                disks=(DiskSpec(path=str(disk)),),
                nics=(NicSpec(mac="02:00:0a:47:00:05", network="bench-base"),),
            )  # fmt: skip
            started = time.monotonic()
            dom = conn.defineXML(domain_xml(spec))
            dom.create()
            took.append(until_answers(host, "10.71.0.5", started))
            print(f"baseline {n + 1}: {took[-1]:.2f} s", flush=True)
            dom.destroy()
            dom.undefine()
    finally:
        net.destroy()
        net.undefine()
        disk.unlink(missing_ok=True)
        conn.close()
    return took


def deploys(tmp: Path, hosts: list[LabHost], count: int) -> list[float]:
    www = tmp / "www"
    guest_image.copy_to(www)
    # migrate.fabric registers <base>/tiny.qcow2 with this checksum.
    image = www / guest_image.IMAGE
    os.replace(image, www / "tiny.qcow2")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp / "pg")))
    broker = DevBroker(log_file=tmp / "broker.log")
    bootstrap = broker.start()
    store = EventStore(pg.target)
    service = CommandService(store)
    logs = tmp / "logs"
    logs.mkdir()
    components = Components(pg.target, bootstrap, logs)
    by_id = {}
    took = []
    try:
        with serve(www) as base_url:
            ids = fabric(service, hosts, tmp, base_url)
            by_id = {ids[h.name]: h for h in hosts}
            for name in ("relay", "projections", "engine", "effector"):
                components.start(name, name, *(["run"] if name == "projections" else []))
            service.execute(RequestTemplateDownload(template_id=ids["template"]))
            wait_until(
                "the template downloaded",
                lambda: getattr(store.load(ids["template"]), "state", "") == "Ready",
                components,
                120,
            )
            for n in range(count):
                host = hosts[n % len(hosts)]
                started = time.monotonic()
                deployed = service.execute(
                    DeployVm(
                        account="bench", name=f"g{n}", zone_id=ids["zone"],
                        template_id=ids["template"],
                        spec=VmSpec(cpus=1, ram_mb=128, root_disk_gb=1),
                        network_ids=(ids["network"],), host_id=ids[host.name],
                    )
                )  # fmt: skip
                op = finished(store, deployed.aggregate_id, components)
                accepted = time.monotonic() - started
                nic = store.load(nic_id(op.id, 0))
                assert isinstance(nic, Nic) and nic.address is not None
                took.append(until_answers(by_id[ids[host.name]], nic.address, started))
                print(
                    f"deploy {n + 1} on {host.name}: {took[-1]:.2f} s"
                    f" (operation succeeded at {accepted:.2f} s)",
                    flush=True,
                )
                stop = service.execute(
                    VmOperation(kind="vm.stop", vm_id=uuid.UUID(str(deployed.value)), forced=True)
                )
                finished(store, stop.aggregate_id, components)
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
        subprocess.run(["rm", "-rf", str(tmp / "pg")], check=False)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--baseline", type=int, default=5)
    parser.add_argument(
        "--rules", type=int, default=10, help="rules timed by bench/rules.py after (0: none)"
    )
    args = parser.parse_args()
    configure_logging("console", "warning")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="cebg-", dir="/tmp"))  # socket paths stay short
    # A copy of its own: the cache keeps one recipe's image at a time.
    image = guest_image.copy_to(tmp / "image")
    lab = Lab(tmp / "lab")
    try:
        hosts = lab.up(3)
        base = baseline(hosts[2], Path(image.path), args.baseline)
        engine = deploys(tmp, hosts, args.deploys)
    finally:
        lab.down(wipe=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"baseline (raw libvirt define+start -> page, {len(base)} runs):"
        f" p50 {statistics.median(base):.2f} s, max {max(base):.2f} s"
    )
    p50, p99 = statistics.median(engine), percentile(engine, 99)
    print(f"engine (DeployVm -> page, {len(engine)} deploys): p50 {p50:.2f} s, p99 {p99:.2f} s")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rule_active = rules_figure(args.rules)
    print(f"guest_ready_p50_s={p50:.2f} guest_ready_p99_s={p99:.2f} rule_active_s={rule_active}")


def rules_figure(count: int) -> str:
    """Rule request -> traffic passing: bench/rules.py (a lab of its own, a
    real guest behind a router), run after the deploys so the two do not
    share the CPU; its output is shown and its rule_active_s taken."""
    if count <= 0:
        return "not-measured"
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("rules.py")), "--rules", str(count)],
        capture_output=True,
        text=True,
        check=False,
    )
    print("--- bench/rules.py ---\n" + done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"bench/rules.py failed (exit {done.returncode})")
    last = dict(kv.split("=", 1) for kv in done.stdout.strip().splitlines()[-1].split())
    return last["rule_active_s"]


if __name__ == "__main__":
    main()
