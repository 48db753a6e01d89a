"""What a network's virtual router is asked to be, validated before use.

Every value that ends up in an ip or nft command is checked here (addresses
and CIDRs parsed, names matched, ports bounded), so neither tool ever sees
anything but what it was meant to.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import msgspec

from cloud_engine.effectors.network.spec import SpecError, check_ifname, check_ipv4

# Inside a router's namespace its two links always have these names.
TENANT_LINK = "tenant"
PUBLIC_LINK = "public"
# Port forwarding is programmed port by port (ruleset.py): a bound on it.
MAX_FORWARDED_PORTS = 100

_NETNS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ID = re.compile(r"^[0-9a-f\-]{36}$")

RuleKind = Literal["firewall", "port_forwarding", "static_nat"]


class RouterRule(msgspec.Struct, frozen=True, kw_only=True):
    """One network rule as the router programs it."""

    id: str  # the rule's UUID: the comment its nft rules carry
    kind: RuleKind
    protocol: str = "all"
    public_ip: str | None = None
    source_cidr: str | None = None
    start_port: int | None = None
    end_port: int | None = None
    private_ip: str | None = None
    private_port: int | None = None


class RouterSpec(msgspec.Struct, frozen=True, kw_only=True):
    netns: str  # the router's network namespace
    table: str  # its nftables table (family ip)
    host_tenant_link: str  # the veth's end on the network's bridge, host side
    host_public_link: str  # the veth's end on the host's public bridge
    tenant_bridge: str  # the network's bridge on the host
    public_bridge: str  # the host's bridge on the public network
    tenant_cidr: str
    tenant_address: str  # the router's address on the network (guests' default route)
    public_cidr: str
    public_address: str  # its source NAT address on the public network
    public_gateway: str | None = None
    rules: tuple[RouterRule, ...] = ()

    @property
    def public_ips(self) -> tuple[str, ...]:
        """The public IPs the router answers for besides its own."""
        found = {r.public_ip for r in self.rules if r.public_ip is not None}
        found.discard(self.public_address)
        return tuple(sorted(found))


def _network(field: str, cidr: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise SpecError(field, f"{cidr!r} is not an IPv4 network ({e})") from None


def _port(field: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise SpecError(field, f"{value} is outside 1..65535")


def validate_rule(rule: RouterRule) -> None:
    if not _ID.match(rule.id):
        raise SpecError("rules.id", f"{rule.id!r} is not a UUID")
    if rule.protocol not in ("tcp", "udp", "icmp", "all"):
        raise SpecError("rules.protocol", f"{rule.protocol!r} is not tcp, udp, icmp or all")
    for field in ("public_ip", "private_ip"):
        value = getattr(rule, field)
        if value is not None:
            check_ipv4(f"rules.{field}", value)
    if rule.public_ip is None:
        raise SpecError("rules.public_ip", f"a {rule.kind} rule needs a public IP")
    for field in ("start_port", "end_port", "private_port"):
        _port(f"rules.{field}", getattr(rule, field))
    if rule.kind == "firewall":
        _network("rules.source_cidr", rule.source_cidr or "")
        return
    if rule.private_ip is None:
        raise SpecError("rules.private_ip", f"a {rule.kind} rule needs a private IP")
    if rule.kind == "port_forwarding":
        if rule.protocol not in ("tcp", "udp"):
            raise SpecError("rules.protocol", "port forwarding is tcp or udp")
        if rule.start_port is None or rule.private_port is None:
            raise SpecError("rules.start_port", "port forwarding needs both port ranges")
        end = rule.end_port if rule.end_port is not None else rule.start_port
        count = end - rule.start_port + 1
        if not 1 <= count <= MAX_FORWARDED_PORTS or rule.private_port + count - 1 > 65535:
            raise SpecError("rules.end_port", f"{count} ports cannot be forwarded")


def validate_router(spec: RouterSpec) -> None:
    if not _NETNS.match(spec.netns):
        raise SpecError("netns", f"{spec.netns!r} is not a usable namespace name")
    if not _TABLE.match(spec.table):
        raise SpecError("table", f"{spec.table!r} is not a usable nft table name")
    for field in ("host_tenant_link", "host_public_link", "tenant_bridge", "public_bridge"):
        check_ifname(field, getattr(spec, field))
    tenant = _network("tenant_cidr", spec.tenant_cidr)
    public = _network("public_cidr", spec.public_cidr)
    if check_ipv4("tenant_address", spec.tenant_address) not in tenant:
        raise SpecError("tenant_address", f"{spec.tenant_address} is outside {tenant}")
    if check_ipv4("public_address", spec.public_address) not in public:
        raise SpecError("public_address", f"{spec.public_address} is outside {public}")
    if spec.public_gateway is not None:
        check_ipv4("public_gateway", spec.public_gateway)
    for rule in spec.rules:
        validate_rule(rule)
