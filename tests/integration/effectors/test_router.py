"""The virtual router with real namespaces and real nftables.

A "host" namespace holds the network's bridge and a public bridge; a "vm"
namespace (a VM's port) and an "outside" namespace (a server on the public
network) hang on them by veths, and the machine's root namespace is a
client on the public network through a veth of the test's own, in a subnet
no other link of the machine has. Everything is removed by the fixtures,
also on failure. Needs nft (scripts/libvirt-host installs nftables): no
skip path. Nothing is routed off the machine: the only links are
these veths.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from cloud_engine.effectors.network import router
from cloud_engine.effectors.network.router_spec import RouterRule, RouterSpec
from cloud_engine.effectors.network.spec import SpecError

# Serves its own name on the given port: which namespace answered.
SERVER = """
import http.server, socketserver, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (name + " " + self.client_address[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer(("0.0.0.0", port), H).serve_forever()
"""
FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())
except Exception as e:
    print("FAILED", type(e).__name__)
"""


def sh(*argv: str, check: bool = True, netns: str | None = None) -> str:
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(full)}: {proc.stderr}")
    return proc.stdout


def fetch(url: str, netns: str | None = None, timeout: float = 2.0) -> str:
    return sh(sys.executable, "-c", FETCH, url, str(timeout), netns=netns).strip()


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 100.64.0.0/10 (shared address space) no link here uses."""
    used = json.loads(sh("ip", "-j", "-4", "address", "show"))
    taken = [
        ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for link in used
        for a in link.get("addr_info", [])
    ]
    for net in ipaddress.IPv4Network("100.64.0.0/10").subnets(new_prefix=24):
        if net.network_address.packed[2] >= 200 and not any(net.overlaps(t) for t in taken):
            return net
    raise AssertionError("no free /24 in 100.64.0.0/10")


class World:
    """The namespaces and links of one test, and the router's spec."""

    def __init__(self) -> None:
        self.hexid = uuid.uuid4().hex[:8]
        h = self.hexid
        self.host, self.vm, self.outside = f"cet-h-{h}", f"cet-v-{h}", f"cet-o-{h}"
        self.root_link = f"cetr{h}"
        self.public = free_subnet()
        p = list(self.public.hosts())
        self.root_ip, self.router_ip, self.pub_ip, self.outside_ip = (
            str(p[0]),
            str(p[1]),
            str(p[2]),
            str(p[9]),
        )
        self.tenant = ipaddress.IPv4Network("10.77.0.0/24")
        self.vm_ip, self.router_tenant_ip = "10.77.0.5", "10.77.0.254"
        self.servers: list[subprocess.Popen[bytes]] = []
        self.router_ns = f"cet-r-{h}"

    def build(self) -> None:
        for ns in (self.host, self.vm, self.outside):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.host, "link", "add", "tbr", "type", "bridge")
        sh("ip", "-n", self.host, "link", "add", "pbr", "type", "bridge")
        for br in ("tbr", "pbr"):
            sh("ip", "-n", self.host, "link", "set", br, "up")
        self._port(self.vm, "tbr", "eth0", f"{self.vm_ip}/24", self.router_tenant_ip)
        self._port(self.outside, "pbr", "eth0", f"{self.outside_ip}/{self.public.prefixlen}", None)
        sh(
            "ip",
            "link",
            "add",
            self.root_link,
            "type",
            "veth",
            "peer",
            "name",
            "root",
            "netns",
            self.host,
        )
        sh("ip", "-n", self.host, "link", "set", "root", "master", "pbr", "up")
        sh("ip", "address", "add", f"{self.root_ip}/{self.public.prefixlen}", "dev", self.root_link)
        sh("ip", "link", "set", self.root_link, "up")
        self.serve(self.vm, "vm", 80)
        self.serve(self.outside, "outside", 80)

    def _port(self, ns: str, bridge: str, name: str, address: str, gw: str | None) -> None:
        sh(
            "ip",
            "-n",
            self.host,
            "link",
            "add",
            f"p{ns[4]}{self.hexid}",
            "type",
            "veth",
            "peer",
            "name",
            name,
            "netns",
            ns,
        )
        sh("ip", "-n", self.host, "link", "set", f"p{ns[4]}{self.hexid}", "master", bridge, "up")
        sh("ip", "-n", ns, "address", "add", address, "dev", name)
        sh("ip", "-n", ns, "link", "set", name, "up")
        if gw is not None:
            sh("ip", "-n", ns, "route", "add", "default", "via", gw)

    def serve(self, ns: str, name: str, port: int) -> None:
        self.servers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, name, str(port)]
            )
        )

    def spec(self, *rules: RouterRule) -> RouterSpec:
        return RouterSpec(
            netns=self.router_ns,
            table=f"ce_vr_{self.hexid}",
            host_tenant_link=f"vr{self.hexid}t",
            host_public_link=f"vr{self.hexid}p",
            tenant_bridge="tbr",
            public_bridge="pbr",
            tenant_cidr=str(self.tenant),
            tenant_address=self.router_tenant_ip,
            public_cidr=str(self.public),
            public_address=self.router_ip,
            public_gateway=self.root_ip,
            rules=rules,
        )

    def teardown(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for ns in (self.router_ns, self.vm, self.outside, self.host):
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.root_link, check=False)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    try:
        w.build()
        yield w
    finally:
        w.teardown()


def rid() -> str:
    return str(uuid.uuid4())


def until(check: object, url: str, netns: str | None, want: str, tries: int = 10) -> str:
    """Fetch until the answer starts with want (a server may still be starting)."""
    got = ""
    for _ in range(tries):
        got = fetch(url, netns)
        if got.startswith(want):
            return got
    return got


def test_egress_port_forwarding_firewall_static_nat(world: World) -> None:
    w = world
    # Egress: the VM reaches the outside server, seen as the router's address.
    assert router.ensure(w.spec(), w.host) != []
    assert router.ensure(w.spec(), w.host) == []  # idempotent: nothing to repair
    got = until(None, f"http://{w.outside_ip}/", w.vm, "outside")
    assert got == f"outside {w.router_ip}"
    # Without a rule the public side reaches nothing of the network.
    assert fetch(f"http://{w.vm_ip}/", None, 1.0).startswith("FAILED")

    # Port forwarding public:8080 -> vm:80, fetched from the root namespace.
    pf = RouterRule(
        id=rid(),
        kind="port_forwarding",
        protocol="tcp",
        public_ip=w.pub_ip,
        start_port=8080,
        end_port=8080,
        private_ip=w.vm_ip,
        private_port=80,
    )
    assert router.ensure(w.spec(pf), w.host) != []
    assert fetch(f"http://{w.pub_ip}:8080/") == f"vm {w.root_ip}"
    assert fetch(f"http://{w.pub_ip}:8081/", None, 1.0).startswith("FAILED")

    # A firewall rule on the public IP admits only its source CIDR.
    other = f"{w.public.network_address + 200}/32"
    fw_other = RouterRule(
        id=rid(),
        kind="firewall",
        protocol="tcp",
        public_ip=w.pub_ip,
        source_cidr=other,
        start_port=8080,
        end_port=8080,
    )
    router.ensure(w.spec(pf, fw_other), w.host)
    assert fetch(f"http://{w.pub_ip}:8080/", None, 1.0).startswith("FAILED")
    assert fetch(f"http://{w.pub_ip}:8080/", w.outside, 1.0).startswith("FAILED")
    fw_root = RouterRule(
        id=rid(),
        kind="firewall",
        protocol="tcp",
        public_ip=w.pub_ip,
        source_cidr=f"{w.root_ip}/32",
        start_port=8080,
    )
    router.ensure(w.spec(pf, fw_other, fw_root), w.host)
    assert fetch(f"http://{w.pub_ip}:8080/") == f"vm {w.root_ip}"
    assert fetch(f"http://{w.pub_ip}:8080/", w.outside, 1.0).startswith("FAILED")

    # Revoked (left out of the spec): the port is closed again.
    router.ensure(w.spec(), w.host)
    assert fetch(f"http://{w.pub_ip}:8080/", None, 1.0).startswith("FAILED")

    # Static NAT: in on every port, and the VM's own traffic leaves as it.
    nat = RouterRule(id=rid(), kind="static_nat", public_ip=w.pub_ip, private_ip=w.vm_ip)
    router.ensure(w.spec(nat), w.host)
    assert fetch(f"http://{w.pub_ip}/") == f"vm {w.root_ip}"
    assert fetch(f"http://{w.outside_ip}/", w.vm) == f"outside {w.pub_ip}"


def test_a_rule_deleted_behind_our_back_is_repaired(world: World) -> None:
    w = world
    pf = RouterRule(
        id=rid(),
        kind="port_forwarding",
        protocol="tcp",
        public_ip=w.pub_ip,
        start_port=8080,
        private_ip=w.vm_ip,
        private_port=80,
    )
    spec = w.spec(pf)
    router.ensure(spec, w.host)
    assert fetch(f"http://{w.pub_ip}:8080/") == f"vm {w.root_ip}"
    listing = json.loads(
        sh("nft", "-j", "-a", "list", "chain", "ip", spec.table, "vr_pre", netns=spec.netns)
    )
    handle = next(
        i["rule"]["handle"]
        for i in listing["nftables"]
        if "rule" in i and i["rule"].get("comment") == f"rule:{pf.id}"
    )
    sh("nft", "delete", "rule", "ip", spec.table, "vr_pre", "handle", str(handle), netns=spec.netns)
    assert fetch(f"http://{w.pub_ip}:8080/", None, 1.0).startswith("FAILED")
    repaired = router.ensure(spec, w.host)
    assert len(repaired) == 1 and f"rule:{pf.id}" in repaired[0]
    assert fetch(f"http://{w.pub_ip}:8080/") == f"vm {w.root_ip}"


def test_remove_leaves_nothing(world: World) -> None:
    w = world
    spec = w.spec()
    router.ensure(spec, w.host)
    assert router.remove(spec.netns, w.host, (spec.host_tenant_link, spec.host_public_link))
    assert spec.netns not in sh("ip", "netns", "list")
    assert spec.host_tenant_link not in sh("ip", "-n", w.host, "link", "show")
    assert not router.remove(spec.netns, w.host, (spec.host_tenant_link, spec.host_public_link))


def test_bad_spec_is_refused_before_anything_runs(world: World) -> None:
    w = world
    bad = RouterRule(id=rid(), kind="firewall", public_ip=w.pub_ip, source_cidr="10.0.0.1/8")
    with pytest.raises(SpecError) as e:
        router.ensure(w.spec(bad), w.host)
    assert e.value.field == "rules.source_cidr"
    with pytest.raises(SpecError):
        router.ensure(msgspec_replace(w.spec(), table='x"; flush ruleset'), w.host)


def msgspec_replace(spec: RouterSpec, **changes: object) -> RouterSpec:
    import msgspec

    return msgspec.structs.replace(spec, **changes)
