"""A network rule taking effect: request accepted -> traffic passing (issue 20).

An embedded PostgreSQL, the dev broker and every component as its own
`cloud-engine` process (relay, projections, engine, effector), on a lab of
two hosts with its public network. The fabric: the hosts, the zone's
public network (the lab's), a VXLAN network created with it (so it has a
virtual router on its network node) and its tag, which asks for the
router. The VM is a namespace plugged into the network's bridge on the
network node with an address the engine allocated, serving HTTP on 80
(traffic through the router is the same whatever is behind the port).

Each sample: a public IP allocated (untimed), then a port forwarding rule
(public IP:8000+n -> the VM's 80) submitted; its time runs from the
command's answer (the rule recorded: the API's 202) to the first HTTP
answer through the public IP from the machine's root namespace, polled
every 10 ms. Also shown: to the rule's Activated event. Baseline from the
same run: the raw nft apply of the router's table (nft -f of the same
ruleset, replacing it), the part no engine can avoid.

Needs root and scripts/libvirt-host's packages (nftables among them).

    python bench/rules.py [--rules 10]

Last line: rule_active_s=<p50> nft_apply_s=<p50 of the baseline>
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
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy_processes import Components, wait_until

from cloud_engine.bus.broker import DevBroker
from cloud_engine.engine.commands.fabric import CreateCluster, CreatePod, CreateZone, RegisterHost
from cloud_engine.engine.commands.network import AllocateIp, CreateNetwork, CreateNetworkRule
from cloud_engine.engine.commands.network_tags import AllocateNetworkTag
from cloud_engine.engine.commands.physical_networks import CreatePhysicalNetwork
from cloud_engine.engine.fabric.physical_network import TagRange
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import EmbeddedPostgres
from cloud_engine.infra.logs import configure_logging
from cloud_engine.infra.settings import load_settings
from cloud_engine.lab.lab import Lab
from cloud_engine.lab.model import LabHost

SERVER = """
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2")
        self.end_headers(); self.wfile.write(b"vm")
    def log_message(self, *a): pass
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer(("0.0.0.0", 80), H).serve_forever()
"""


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=stdin, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr}")
    return done.stdout


def answers(url: str) -> bool:
    try:
        body: bytes = urllib.request.urlopen(url, timeout=0.2).read()
    except OSError:
        return False
    return body == b"vm"


def fabric(service: CommandService, lab: Lab, hosts: list[LabHost]) -> dict[str, uuid.UUID]:
    run = service.execute
    zone = run(CreateZone(name="bench-rules")).aggregate_id
    pod = run(CreatePod(zone_id=zone, name="p", gateway="10.0.0.1", cidr="10.0.0.0/24"))
    cluster = run(CreateCluster(zone_id=zone, pod_id=pod.aggregate_id, name="c")).aggregate_id
    for h in hosts:
        run(
            RegisterHost(
                zone_id=zone, pod_id=pod.aggregate_id, cluster_id=cluster, name=h.name,
                cpu_cores=4, ram_mb=2048, libvirt_uri=h.uri, underlay_address=h.address,
                underlay_device=h.underlay_device,
            )
        )  # fmt: skip
    subnet, gateway = lab.public_network()
    public = run(
        CreateNetwork(account="ops", name="public", zone_id=zone, cidr=subnet, gateway=gateway,
                      isolation="none", purpose="public")
    ).aggregate_id  # fmt: skip
    physical = run(
        CreatePhysicalNetwork(zone_id=zone, name="underlay", isolation="VXLAN",
                              tag_range=TagRange(first=7100, last=7109))
    ).aggregate_id  # fmt: skip
    network = run(
        CreateNetwork(account="bench", name="routed", zone_id=zone, cidr="10.71.0.0/24",
                      isolation="VXLAN", physical_network_id=physical, public_network_id=public)
    ).aggregate_id  # fmt: skip
    run(AllocateNetworkTag(network_id=network))  # asks for the router
    return {"zone": zone, "public": public, "network": network}


def router_of(network: uuid.UUID) -> str | None:
    suffix = f"-vr{network.hex[:10]}"
    names = [line.split()[0] for line in sh("ip", "netns", "list").splitlines()]
    return next((n for n in names if n.endswith(suffix)), None)


def nft_apply_times(router: str, table: str, count: int) -> list[float]:
    ruleset = sh("ip", "netns", "exec", router, "nft", "list", "table", "ip", table)
    script = f"table ip {table}\ndelete table ip {table}\n{ruleset}"
    times = []
    for _ in range(count):
        start = time.perf_counter()
        sh("ip", "netns", "exec", router, "nft", "-f", "-", stdin=script)
        times.append(time.perf_counter() - start)
    return times


def stamp(event: object) -> float:
    moment: datetime = getattr(event, "timestamp")  # noqa: B009  (every event has one)
    return moment.timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", type=int, default=10)
    args = parser.parse_args()
    configure_logging("console", "warning")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="cebr-", dir="/tmp"))
    lab = Lab(tmp / "lab")
    pg = EmbeddedPostgres(load_settings(environ={}, data_dir=str(tmp / "pg")))
    broker = DevBroker(log_file=tmp / "broker.log")
    server: subprocess.Popen[bytes] | None = None
    stand_in = f"cebr-vm-{uuid.uuid4().hex[:6]}"
    components: Components | None = None
    try:
        hosts = lab.up(2)
        bootstrap = broker.start()
        store = EventStore(pg.target)
        service = CommandService(store)
        logs = tmp / "logs"
        logs.mkdir()
        components = Components(pg.target, bootstrap, logs)
        ids = fabric(service, lab, hosts)
        for name in ("relay", "projections", "engine", "effector"):
            components.start(name, name, *(["run"] if name == "projections" else []))
        network = ids["network"]
        wait_until("the router", lambda: router_of(network) is not None, components, 120)
        router = router_of(network)
        assert router is not None
        node_ns = router.rsplit("-vr", 1)[0]
        vm_ip = str(service.execute(AllocateIp(network_id=network)).value)
        sh("ip", "netns", "add", stand_in)
        sh("ip", "-n", node_ns, "link", "add", "cebrvm0", "type", "veth", "peer", "name", "eth0",
           "netns", stand_in)  # fmt: skip
        sh("ip", "-n", node_ns, "link", "set", "cebrvm0", "master", f"cebr{network.hex[:10]}", "up")
        for line in (
            "link set lo up",
            "link set eth0 mtu 1400 up",
            f"address add {vm_ip}/24 dev eth0",
            "route add default via 10.71.0.254",
        ):
            sh("ip", "-n", stand_in, *line.split())  # fmt: skip
        server = subprocess.Popen(["ip", "netns", "exec", stand_in, sys.executable, "-c", SERVER])
        totals: list[float] = []
        to_active: list[float] = []
        for n in range(args.rules + 1):
            public_ip = service.execute(AllocateIp(network_id=ids["public"], account="bench"))
            url = f"http://{public_ip.value}:{8000 + n}/"
            submitted = time.time()
            rule = service.execute(
                CreateNetworkRule(network_id=network, kind="port_forwarding", protocol="tcp",
                                  start_port=8000 + n, public_ip_id=public_ip.aggregate_id,
                                  private_ip=vm_ip, private_port=80)
            )  # fmt: skip
            accepted = time.time()
            while not answers(url):
                if time.time() - accepted > 60:
                    raise RuntimeError(f"rule {n} never passed traffic")
                time.sleep(0.01)
            passing = time.time()
            rule_id = rule.aggregate_id

            def active(rule_id: uuid.UUID = rule_id) -> bool:
                return getattr(store.load(rule_id), "state", "") == "Active"

            wait_until("the rule Active", active, components, 60)
            activated = max(
                stamp(e) for e in store.events_of(rule.aggregate_id)
                if type(e).__name__ == "Activated"
            )  # fmt: skip
            if n == 0:
                print(f"rule 0 (untimed, first of the router's table): {passing - accepted:.3f} s")
                continue
            totals.append(passing - accepted)
            to_active.append(activated - submitted)
            print(
                f"rule {n}: traffic passing {passing - accepted:.3f} s after accepted"
                f" (Activated {activated - submitted:.3f} s after submit)"
            )
        baseline = nft_apply_times(router, f"ce_vr_{network.hex[:10]}", 10)
    except BaseException:
        if components is not None:
            for name in components.processes:
                print(f"--- {name} log (tail) ---\n{components.tail(name)}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.kill()
            server.wait()
        sh("ip", "netns", "del", stand_in, check=False)
        if components is not None:
            components.stop()
        broker.stop()
        pg.stop()
        lab.down(wipe=True)
        shutil.rmtree(tmp, ignore_errors=True)
    p50 = statistics.median(totals)
    print(f"traffic passing: p50 {p50:.3f} s, max {max(totals):.3f} s over {len(totals)} rules")
    print(f"rule Activated: p50 {statistics.median(to_active):.3f} s")
    print(f"baseline nft -f of the router's table: p50 {statistics.median(baseline):.3f} s")
    print(f"rule_active_s={p50:.3f} nft_apply_s={statistics.median(baseline):.3f}")


if __name__ == "__main__":
    main()
