"""The underlay: a bridge joining the hosts, one veth pair per host.

The bridge lives in a namespace of its own (the lab's "switch"), not in the
machine's: the machine's firewall (br_netfilter passes bridged packets
through its FORWARD chain, which Docker, for one, sets to DROP) never sees
lab traffic, `ip link` on the machine stays clean, and there is no
interface through which a lab packet could be routed onto the uplink: the
switch has no address and no other link, each host only its underlay
address and no default route.
"""

from __future__ import annotations

from cloud_engine.lab import public
from cloud_engine.lab.model import BRIDGE, UNDERLAY_DEVICE, Layout
from cloud_engine.lab.system import ip, ip_batch, list_netns, run

# Jumbo frames, as data-center underlays use: a VXLAN network over it keeps
# a 1500-byte MTU for its guests.
MTU = 9000


def ensure_switch(layout: Layout) -> None:
    sw = layout.switch_netns
    if sw not in list_netns():
        ip("netns", "add", sw)
    if BRIDGE not in ports(layout, include_bridge=True):
        ip_batch(
            [
                f"link add {BRIDGE} mtu {MTU} type bridge stp_state 0",
                # No IPv6 link-local address: the switch itself says nothing.
                f"link set {BRIDGE} addrgenmode none",
                f"link set {BRIDGE} up",
            ],
            netns=sw,
        )


def ports(layout: Layout, *, include_bridge: bool = False) -> list[str]:
    """The links in the switch namespace (the hosts' ports)."""
    sw = layout.switch_netns
    if sw not in list_netns():
        return []
    out = run(["ip", "-n", sw, "-o", "link", "show"]).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    names = [n for n in names if not public.is_public_port(n)]
    return [n for n in names if n != "lo" and (include_bridge or n != BRIDGE)]


def add_host(layout: Layout, name: str, index: int) -> None:
    """The host's namespace with its underlay link on the switch."""
    sw, ns = layout.switch_netns, layout.netns(name)
    ip("netns", "add", ns)
    ip(
        "link", "add", name, "netns", sw, "mtu", str(MTU), "type", "veth",
        "peer", "name", UNDERLAY_DEVICE, "netns", ns, "mtu", str(MTU),
        "address", underlay_mac(layout, index),
    )  # fmt: skip
    ip_batch(
        [f"link set {name} addrgenmode none", f"link set {name} master {BRIDGE} up"],
        netns=sw,
    )
    prefix = layout.subnet.prefixlen
    ip_batch(
        [
            "link set lo up",
            f"address add {layout.address(index)}/{prefix} dev {UNDERLAY_DEVICE}",
            f"link set {UNDERLAY_DEVICE} up",
        ],
        netns=ns,
    )


def underlay_mac(layout: Layout, index: int) -> str:
    """The host's underlay MAC, the same on every boot, as a machine's NIC
    keeps its own: the other hosts' ARP entries for its address stay right
    across a power cycle (a new MAC left them pointing at the old one for
    seconds after power-on). 02: locally administered."""
    lab = layout.lab_id
    return f"02:1a:{lab[0:2]}:{lab[2:4]}:{lab[4:6]}:{index:02x}"


def remove_host(layout: Layout, name: str) -> None:
    """Its port and namespace. Deleting one end of a veth pair deletes both at
    once; a namespace's own links go only when the kernel frees it, later."""
    if name in ports(layout):
        ip("link", "del", name, netns=layout.switch_netns, check=False)
    ip("link", "del", f"pub-{name}", netns=layout.switch_netns, check=False)
    # What was made on the host's behalf (the engine's routers) goes with it.
    for ns in public.host_namespaces(layout, name):
        ip("netns", "del", ns, check=False)
    if layout.netns(name) in list_netns():
        ip("netns", "del", layout.netns(name))


def remove_switch(layout: Layout) -> None:
    if layout.switch_netns in list_netns():
        ip("netns", "del", layout.switch_netns)


def set_link(layout: Layout, name: str, *, up: bool) -> None:
    """The host's port on the switch: down, and nothing reaches the host's
    underlay address nor leaves it (its link has no carrier)."""
    ip("link", "set", name, "up" if up else "down", netns=layout.switch_netns)
