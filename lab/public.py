"""The lab's public network: "the internet" of a lab, inside the machine.

A bridge `public` in the switch namespace joins a port of every host (a
veth to a bridge `cepublic` in the host, where the engine's virtual
routers attach: the host's public bridge) and one veth from the machine's
root namespace, which holds the network's first address: from the root
namespace every public IP of the lab is on-link, as hosts on the internet
are to a cloud's users. The subnet is a /24 of 100.64.0.0/10 (shared
address space, never routed on the internet) that no link of the machine
uses, chosen when the lab is first made and kept in its state.

Nothing leaves the machine: the root namespace forwards nothing from or
to that veth (a table `inet celab_<lab id>` of its own drops it in the
forward hook), so a router's default route ends in the root namespace and
no further. Tests make their "outside" servers as namespaces on the same
bridge (`outside_port`).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

from cloud_engine.lab.model import Layout
from cloud_engine.lab.system import ip, ip_batch, list_netns, run

BRIDGE = "public"
# In every host: the bridge routers attach to, and its port to the switch.
HOST_BRIDGE = "cepublic"
HOST_PORT = "public0"
SHARED_SPACE = ipaddress.IPv4Network("100.64.0.0/10")


def root_link(layout: Layout) -> str:
    return f"cepub{layout.lab_id}"


def _guard_table(layout: Layout) -> str:
    return f"celab_{layout.lab_id}"


def _root_networks() -> list[ipaddress.IPv4Network]:
    out = run(["ip", "-j", "-4", "address", "show"]).stdout
    return [
        ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for link in json.loads(out or "[]")
        for a in link.get("addr_info", [])
    ]


def choose_subnet(layout: Layout) -> str:
    """A /24 of the shared address space that no link here uses (another
    lab's public network included)."""
    used = _root_networks()
    # A hash of the lab's id picks where to start, so labs rarely race for one.
    start = int(layout.lab_id, 16) % 4096
    subnets = list(SHARED_SPACE.subnets(new_prefix=24))
    for i in range(len(subnets)):
        net = subnets[(start + i) % len(subnets)]
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise RuntimeError("no free /24 in 100.64.0.0/10 for the lab's public network")


def gateway(subnet: str) -> str:
    return str(ipaddress.IPv4Network(subnet).network_address + 1)


def ensure(layout: Layout, subnet: str) -> None:
    """The switch's public bridge and the root namespace's link to it."""
    sw = layout.switch_netns
    links = run(["ip", "-n", sw, "-o", "link", "show"]).stdout
    if f" {BRIDGE}:" not in links:
        ip_batch(
            [
                f"link add {BRIDGE} type bridge stp_state 0",
                f"link set {BRIDGE} addrgenmode none",
                f"link set {BRIDGE} up",
            ],
            netns=sw,
        )
    link = root_link(layout)
    if run(["ip", "link", "show", link], check=False).returncode != 0:
        ip("link", "add", link, "type", "veth", "peer", "name", "root", "netns", sw)
        ip_batch(["link set root addrgenmode none", f"link set root master {BRIDGE} up"], netns=sw)
        ip("address", "add", f"{gateway(subnet)}/24", "dev", link)
        ip("link", "set", link, "up")
    table = _guard_table(layout)
    script = (
        f"table inet {table}\ndelete table inet {table}\n"
        f"table inet {table} {{\n  chain forward {{\n"
        "    type filter hook forward priority filter - 10; policy accept;\n"
        f'    iifname "{link}" drop\n    oifname "{link}" drop\n  }}\n}}\n'
    )
    done = run_nft(script)
    if done:
        raise RuntimeError(f"nft refused the lab's guard table: {done}")


def run_nft(script: str) -> str:
    """nft's complaint, or "" when it took the script."""
    proc = subprocess.run(
        ["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    return "" if proc.returncode == 0 else proc.stderr.strip()


def is_public_port(link: str) -> bool:
    """A link of the switch namespace that belongs to the public network."""
    return link in (BRIDGE, "root") or link.startswith("pub-")


def add_host(layout: Layout, name: str) -> None:
    """The host's public bridge and its port on the switch's."""
    sw, ns = layout.switch_netns, layout.netns(name)
    port = f"pub-{name}"
    ip("link", "add", port, "netns", sw, "type", "veth", "peer", "name", HOST_PORT, "netns", ns)
    ip_batch([f"link set {port} addrgenmode none", f"link set {port} master {BRIDGE} up"], netns=sw)
    ip_batch(
        [
            f"link add {HOST_BRIDGE} type bridge stp_state 0",
            f"link set {HOST_BRIDGE} addrgenmode none",
            f"link set {HOST_PORT} master {HOST_BRIDGE} up",
            f"link set {HOST_BRIDGE} up",
        ],
        netns=ns,
    )


def remove(layout: Layout) -> None:
    """The root link and the guard table (the switch's side goes with the switch)."""
    ip("link", "del", root_link(layout), check=False)
    run_nft(f"table inet {_guard_table(layout)}\ndelete table inet {_guard_table(layout)}\n")


def host_namespaces(layout: Layout, name: str) -> list[str]:
    """Namespaces made on the host's behalf (its routers: `<host netns>-...`)."""
    prefix = f"{layout.netns(name)}-"
    return [ns for ns in list_netns() if ns.startswith(prefix)]
