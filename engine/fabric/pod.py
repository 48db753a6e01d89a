"""Pod: a rack or row inside a zone, with its own management network."""

from __future__ import annotations

import ipaddress
from typing import Literal
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import require, require_name
from cloud_engine.engine.errors import Validation
from cloud_engine.engine.fabric.lifecycle import Switchable

PodState = Literal["Enabled", "Disabled"]


def _management_network(cidr: str, gateway: str) -> tuple[str, str]:
    """The canonical (cidr, gateway) pair, or Validation."""
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise Validation("cidr must be a network such as 10.1.0.0/24", field="cidr") from None
    try:
        address = ipaddress.ip_address(gateway)
    except ValueError:
        raise Validation("gateway must be an IP address", field="gateway") from None
    require(address in network, f"gateway must lie inside {network}", field="gateway")
    # /31 and /32 (and IPv6 /127, /128) have no network or broadcast address to avoid.
    if network.num_addresses > 2:
        reserved = {network.network_address}
        if isinstance(network, ipaddress.IPv4Network):
            reserved.add(network.broadcast_address)
        require(
            address not in reserved,
            "gateway must not be the network or broadcast address",
            field="gateway",
        )
    return str(network), str(address)


class Pod(Switchable):
    entity = "pod"

    @event("Created")
    def __init__(self, zone_id: UUID, name: str, gateway: str, cidr: str) -> None:
        self.zone_id = zone_id
        self.name = name
        self.gateway = gateway
        self.cidr = cidr
        self.state: PodState = "Enabled"

    @classmethod
    def create(
        cls, *, zone_id: UUID, name: str, gateway: str, cidr: str, id: UUID | None = None
    ) -> Pod:
        require_name(name)
        cidr, gateway = _management_network(cidr, gateway)
        pod: Pod = cls._new(id=id, zone_id=zone_id, name=name, gateway=gateway, cidr=cidr)
        return pod

    @property
    def netmask(self) -> str:
        return str(ipaddress.ip_network(self.cidr).netmask)

    @property
    def prefix_length(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen
