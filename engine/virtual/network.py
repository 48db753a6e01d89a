"""Network: a tenant's guest network and the pool of IPv4 addresses it hands out.

Addresses are allocated on the network itself, so two commands racing for the
last free address conflict on the network's version instead of both winning.
The pool is a set of taken host numbers plus a hint at the lowest free one:
allocating in order never rescans the addresses already handed out.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.errors import CapacityExceeded, Conflict, Validation

NetworkState = Literal["Allocated", "Implemented", "Shutdown", "Destroyed"]
Isolation = Literal["VLAN", "VXLAN", "none"]
# isolated: one account's guest network; shared: one L2 segment (and one
# address range) that every account's VMs may join, made by an admin;
# public: the zone's network onto the outside, whose addresses are public
# IPs handed to accounts.
Purpose = Literal["isolated", "shared", "public"]
PURPOSES: tuple[Purpose, ...] = ("isolated", "shared", "public")

ISOLATIONS: tuple[Isolation, ...] = ("VLAN", "VXLAN", "none")
# 802.1Q reserves VLAN ids 0 and 4095; a VXLAN network identifier has 24 bits.
TAG_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"VLAN": (1, 4094), "VXLAN": (1, 2**24 - 1)}
)
MIN_PREFIX, MAX_PREFIX = 8, 30


def parse_cidr(cidr: str) -> ipaddress.IPv4Network:
    """The IPv4 network named by cidr, or Validation naming field "cidr"."""
    try:
        network = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError:
        raise Validation(
            f"cidr must be an IPv4 network address such as 10.1.0.0/24, not {cidr!r}",
            field="cidr",
        ) from None
    require(
        MIN_PREFIX <= network.prefixlen <= MAX_PREFIX,
        f"cidr prefix must be between /{MIN_PREFIX} and /{MAX_PREFIX}",
        field="cidr",
    )
    return network


def parse_address(address: str, field: str = "address") -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(address)
    except ValueError:
        raise Validation(f"{field} must be an IPv4 address, not {address!r}", field=field) from None


# Event methods convert addresses they (or a replay) already know to be canonical;
# the socket module does that several times faster than ipaddress.
def _to_int(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big")


def _to_str(number: int) -> str:
    return socket.inet_ntoa(number.to_bytes(4, "big"))


def _gateway_for(network: ipaddress.IPv4Network, gateway: str | None) -> str:
    if gateway is None:
        return str(network.network_address + 1)
    address = parse_address(gateway, "gateway")
    require(address in network, f"gateway must lie inside {network}", field="gateway")
    require(
        address not in (network.network_address, network.broadcast_address),
        "gateway must not be the network or broadcast address",
        field="gateway",
    )
    return str(address)


class Network(Aggregate):
    entity = "network"
    # Set by add_router (RouterAdded); networks recorded before have none.
    router_address: str | None = None
    source_nat_ip_id: UUID | None = None
    source_nat_ip: str | None = None

    class Created(Aggregate.Created):
        """v2 added purpose; networks created before were all isolated."""

        account: str
        name: str
        zone_id: UUID
        cidr: str
        gateway: str
        physical_network_id: UUID | None
        isolation: Isolation
        purpose: Purpose

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["purpose"] = "isolated"

    @event(Created)
    def __init__(
        self,
        account: str,
        name: str,
        zone_id: UUID,
        cidr: str,
        gateway: str,
        physical_network_id: UUID | None,
        isolation: Isolation,
        purpose: Purpose,
    ) -> None:
        self.account = account
        self.purpose: Purpose = purpose
        self.name = name
        self.zone_id = zone_id
        self.cidr = cidr
        self.gateway = gateway
        self.physical_network_id = physical_network_id
        self.isolation: Isolation = isolation
        self.tag: int | None = None
        self.state: NetworkState = "Allocated"
        network = ipaddress.IPv4Network(cidr)
        self._first = int(network.network_address) + 1
        self._last = int(network.broadcast_address) - 1
        self._gateway = int(ipaddress.IPv4Address(gateway))
        self._taken: set[int] = set()
        self._by_address: dict[str, UUID] = {}
        # Every host number below the hint is taken or the gateway.
        self._hint = self._first
        self._advance_hint()

    @classmethod
    def create(
        cls,
        *,
        account: str,
        name: str,
        zone_id: UUID,
        cidr: str,
        gateway: str | None = None,
        physical_network_id: UUID | None = None,
        isolation: Isolation = "VLAN",
        purpose: Purpose = "isolated",
        id: UUID | None = None,  # the library's keyword
    ) -> Network:
        require_name(account, "account")
        require_name(name)
        require(isolation in ISOLATIONS, "isolation must be VLAN, VXLAN or none", field="isolation")
        require(purpose in PURPOSES, "purpose must be isolated, shared or public", field="purpose")
        # The public network is the outside's wire itself: nothing to isolate.
        require(
            purpose != "public" or isolation == "none",
            "a public network has isolation none",
            field="isolation",
        )
        # Tags come from a physical network's range; without one there is none to use.
        require(
            isolation == "none" or physical_network_id is not None,
            f"a {isolation} network needs a physical_network_id",
            field="physical_network_id",
        )
        network = parse_cidr(cidr)
        created: Network = cls._create(
            cls.Created,
            id=id,
            account=account,
            name=name,
            zone_id=zone_id,
            cidr=str(network),
            gateway=_gateway_for(network, gateway),
            physical_network_id=physical_network_id,
            isolation=isolation,
            purpose=purpose,
        )
        return created

    # Address pool -------------------------------------------------------------

    @property
    def allocated(self) -> Mapping[str, UUID]:
        """Allocated address -> the IpAddress aggregate holding it."""
        return MappingProxyType(self._by_address)

    @property
    def free_count(self) -> int:
        return self._last - self._first + 1 - 1 - len(self._taken)

    def contains(self, address: str) -> bool:
        return parse_address(address) in ipaddress.IPv4Network(self.cidr)

    def allocate_ip(self, ip_id: UUID, owner_id: UUID | None, requested: str | None = None) -> str:
        self.require_state(["Allocated", "Implemented"], "allocate an IP on")
        if requested is None:
            if self._hint > self._last:
                raise CapacityExceeded(f"network {self.id} ({self.cidr}) has no free address")
            number = self._hint
        else:
            number = int(parse_address(requested))
            require(
                self._first <= number <= self._last,
                f"address {requested} is not a host address of {self.cidr}",
                field="address",
            )
            require(
                number != self._gateway,
                f"address {requested} is the gateway of {self.cidr}",
                field="address",
            )
            if number in self._taken:
                raise Conflict(f"address {requested} is already allocated", field="address")
        address = _to_str(number)
        self._ip_allocated(ip_id=ip_id, address=address, owner_id=owner_id)
        return address

    def release_ip(self, address: str) -> None:
        self.require_state(["Allocated", "Implemented", "Shutdown"], "release an IP on")
        canonical = str(parse_address(address))
        if canonical not in self._by_address:
            raise Conflict(f"address {address} is not allocated on {self.cidr}", field="address")
        self._ip_released(address=canonical, ip_id=self._by_address[canonical])

    def _advance_hint(self) -> None:
        while self._hint <= self._last and (
            self._hint in self._taken or self._hint == self._gateway
        ):
            self._hint += 1

    @event("IpAllocated")
    def _ip_allocated(self, ip_id: UUID, address: str, owner_id: UUID | None) -> None:
        self._taken.add(_to_int(address))
        self._by_address[address] = ip_id
        self._advance_hint()

    @event("IpReleased")
    def _ip_released(self, address: str, ip_id: UUID) -> None:
        number = _to_int(address)
        self._taken.discard(number)
        del self._by_address[address]
        self._hint = min(self._hint, number)

    # Virtual router -----------------------------------------------------------

    def add_router(self, source_nat_ip_id: UUID, source_nat_ip: str) -> str:
        """Give the network a virtual router: it takes the last host address
        (from now on never handed to a NIC) and leaves through the public IP
        source_nat_ip. Returns the router's address."""
        self.require_state(["Allocated"], "add a router to")
        if self.purpose != "isolated":
            raise Conflict(f"a {self.purpose} network has no router", field="public_network_id")
        if self.router_address is not None:
            raise Conflict(f"network {self.id} has a router already", field="public_network_id")
        if self._last in self._taken or self._last == self._gateway or self._last < self._first:
            raise Conflict(
                f"network {self.id} has no free last address for its router", field="cidr"
            )
        address = _to_str(self._last)
        self._router_added(
            router_address=address, source_nat_ip_id=source_nat_ip_id, source_nat_ip=source_nat_ip
        )
        return address

    @event("RouterAdded")
    def _router_added(
        self, router_address: str, source_nat_ip_id: UUID, source_nat_ip: str
    ) -> None:
        self.router_address = router_address
        self.source_nat_ip_id = source_nat_ip_id
        self.source_nat_ip = source_nat_ip
        # Out of the pool: the hint never reaches it, free_count leaves it out.
        self._last = _to_int(router_address) - 1

    # Lifecycle ----------------------------------------------------------------

    def assign_tag(self, tag: int) -> None:
        self.require_state(["Allocated", "Shutdown"], "assign a tag to")
        if self.isolation == "none":
            raise Conflict(f"network {self.id} has no isolation and takes no tag", field="tag")
        if self.tag is not None:
            raise Conflict(f"network {self.id} already holds tag {self.tag}", field="tag")
        low, high = TAG_RANGES[self.isolation]
        require(low <= tag <= high, f"a {self.isolation} tag must be {low}..{high}", field="tag")
        self._tag_assigned(tag=tag)

    def implement(self) -> None:
        self.require_state(["Allocated", "Shutdown"], "implement")
        # An isolated network is implemented by assigning its tag; implement()
        # only brings back one that kept its tag through a shutdown.
        if self.isolation != "none" and self.tag is None:
            raise Conflict(f"{self.isolation} network {self.id} needs a tag first", field="tag")
        self._implemented()

    def shutdown(self) -> None:
        # Allocated addresses survive a shutdown; only destroy() needs them gone.
        self.require_state(["Implemented"], "shut down")
        self._shut_down()

    def release_tag(self) -> int:
        """Give the tag back (the caller returns it to the physical network)."""
        self.require_state(["Shutdown"], "release the tag of")
        if self.tag is None:
            raise Conflict(f"network {self.id} holds no tag", field="tag")
        tag = self.tag
        self._tag_released(tag=tag)
        return tag

    def destroy(self) -> None:
        self.require_state(["Allocated", "Shutdown"], "destroy")
        if self._taken:
            raise Conflict(f"network {self.id} still has {len(self._taken)} allocated IPs")
        if self.tag is not None:
            raise Conflict(f"network {self.id} still holds tag {self.tag}", field="tag")
        self._destroyed()

    @event("TagAssigned")
    def _tag_assigned(self, tag: int) -> None:
        self.tag = tag
        self.state = "Implemented"

    @event("Implemented")
    def _implemented(self) -> None:
        self.state = "Implemented"

    @event("Shutdown")
    def _shut_down(self) -> None:
        self.state = "Shutdown"

    @event("TagReleased")
    def _tag_released(self, tag: int) -> None:
        self.tag = None

    @event("Destroyed")
    def _destroyed(self) -> None:
        self.state = "Destroyed"
