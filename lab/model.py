"""What a lab is made of: the public view of a host, the recorded state, the
names every part of the lab is known by.

Every name carries the lab's id (a hash of its state directory), so two labs
on one machine (a developer's `up` and the test suite's) never meet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from pathlib import Path
from typing import Literal

import msgspec

# Link-local: never routed by definition, unused by guest networks (which the
# engine takes from RFC 1918), and it lives only inside the lab's namespaces.
DEFAULT_SUBNET = "169.254.240.0/24"
# Inside each host, the underlay link is called this: a name the root
# namespace does not have, so a VXLAN device created in the wrong namespace
# fails loudly instead of sending packets out of the machine.
UNDERLAY_DEVICE = "lab0"
# The switch namespace's bridge joining the hosts.
BRIDGE = "underlay"
MAX_HOSTS = 64
# Host n's address is the subnet's (FIRST_HOST_OFFSET + n)th.
FIRST_HOST_OFFSET = 10
# AF_UNIX paths are at most 107 bytes; the longest socket we connect to.
_LONGEST_SOCKET = "hosts/h64/run/libvirt-admin-sock"
SOCKET_PATH_MAX = 107


class LabError(Exception):
    """The lab cannot do what was asked; the message says why in one line."""


class LabHost(msgspec.Struct, frozen=True, kw_only=True):
    """A hypervisor host of the lab, as the engine and its tests use it."""

    name: str
    # libvirt URI from the root namespace (its own libvirtd).
    uri: str
    # Underlay IPv4 address: migration and the VXLAN underlay.
    address: str
    # Where libvirt sends a live migration's QEMU stream for this host.
    migration_uri: str
    # The underlay device's name inside the host (VXLAN devices ride it).
    underlay_device: str
    # A dir pool every host sees at this same path (SharedMountPoint).
    shared_pool_path: str
    # A dir pool only this host sees; the same path in the root namespace.
    local_pool_path: str
    # `ip netns exec <netns> ...` runs in the host's network namespace.
    netns: str
    # The host's pid 1 in the root namespace (`nsenter -t <pid> -a`).
    pid: int
    # The host's bridge onto the lab's public network (lab/public.py).
    public_bridge: str = "cepublic"


HostPower = Literal["on", "off"]


class HostRecord(msgspec.Struct, kw_only=True):
    name: str
    index: int
    power: HostPower = "off"
    partitioned: bool = False
    # The supervisor (our child) and the host's pid 1, each with its start
    # time in clock ticks, so a reused pid is never taken for ours.
    supervisor_pid: int = 0
    supervisor_start: int = 0
    init_pid: int = 0
    init_start: int = 0


class LabState(msgspec.Struct, kw_only=True):
    version: int = 1
    subnet: str = DEFAULT_SUBNET
    # The public network's /24, chosen at the first `up` (lab/public.py).
    public_subnet: str = ""
    hosts: list[HostRecord] = msgspec.field(default_factory=list)

    def host(self, name: str) -> HostRecord:
        for record in self.hosts:
            if record.name == name:
                return record
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise LabError(f"no lab host {name!r} (hosts: {known})")


class HostStatus(msgspec.Struct, frozen=True, kw_only=True):
    host: LabHost
    power: HostPower
    partitioned: bool
    # libvirtd answered on its socket just now.
    answering: bool
    # Domains running on it (None when libvirtd does not answer).
    running_domains: int | None


class Layout:
    """Paths and names of one lab, all derived from its state directory."""

    def __init__(self, state_dir: Path, subnet: str = DEFAULT_SUBNET) -> None:
        self.state_dir = state_dir.absolute()
        self.subnet = parse_subnet(subnet)
        self.lab_id = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:6]
        if len(str(self.state_dir / _LONGEST_SOCKET)) > SOCKET_PATH_MAX:
            raise LabError(
                f"state directory {self.state_dir} is too long for libvirt's sockets"
                f" (at most {SOCKET_PATH_MAX - len(_LONGEST_SOCKET) - 1} characters)"
            )

    @property
    def state_file(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

    @property
    def caps_seed(self) -> Path:
        return self.state_dir / "caps"

    @property
    def shared_dir(self) -> Path:
        return self.state_dir / "shared"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def netns_prefix(self) -> str:
        return f"celab-{self.lab_id}-"

    @property
    def switch_netns(self) -> str:
        return f"{self.netns_prefix}sw"

    def host_dir(self, name: str) -> Path:
        return self.hosts_dir / name

    def run_dir(self, name: str) -> Path:
        return self.host_dir(name) / "run"

    def local_pool(self, name: str) -> Path:
        return self.host_dir(name) / "local"

    def netns(self, name: str) -> str:
        return f"{self.netns_prefix}{name}"

    def address(self, index: int) -> str:
        return str(self.subnet.network_address + FIRST_HOST_OFFSET + index)

    def host_uuid(self, name: str) -> str:
        # libvirt refuses to migrate between hosts with one UUID; these
        # machines have no SMBIOS, so each daemon would draw a new one per
        # boot. Stable per host, like real hardware.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cloud-engine-lab:{self.lab_id}:{name}"))

    def view(self, record: HostRecord) -> LabHost:
        address = self.address(record.index)
        return LabHost(
            name=record.name,
            uri=f"qemu+unix:///system?socket={self.run_dir(record.name)}/libvirt-sock",
            address=address,
            migration_uri=f"tcp://{address}",
            underlay_device=UNDERLAY_DEVICE,
            shared_pool_path=str(self.shared_dir),
            local_pool_path=str(self.local_pool(record.name)),
            netns=self.netns(record.name),
            pid=record.init_pid if record.power == "on" else 0,
        )


def host_name(index: int) -> str:
    return f"h{index}"


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as e:
        raise LabError(f"subnet {subnet!r} is not an IPv4 network: {e}") from None
    if network.num_addresses < FIRST_HOST_OFFSET + MAX_HOSTS + 2:
        raise LabError(f"subnet {subnet} is too small: use a /25 or larger")
    if not (network.is_private or network.is_link_local):
        raise LabError(f"subnet {subnet} is not link-local or RFC 1918: lab addresses stay local")
    return network
