"""NetworkRule: a firewall, port-forwarding or static-NAT rule on a network.

A rule is recorded as Adding and becomes Active once the effector has
programmed the virtual router; revoking goes through Revoking the same way.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require
from cloud_engine.engine.errors import Validation
from cloud_engine.engine.virtual.network import parse_address

RuleState = Literal["Adding", "Active", "Revoking", "Revoked", "Error"]
RuleKind = Literal["firewall", "port_forwarding", "static_nat"]
Protocol = Literal["tcp", "udp", "icmp", "all"]

KINDS: tuple[RuleKind, ...] = ("firewall", "port_forwarding", "static_nat")
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "icmp", "all")
MIN_PORT, MAX_PORT = 1, 65535
# Port forwarding is programmed port by port: a bound on a range's length.
MAX_FORWARDED_PORTS = 100


def _source_cidr(cidr: str) -> str:
    try:
        return str(ipaddress.IPv4Network(cidr, strict=True))
    except ValueError:
        raise Validation(
            f"source_cidr must be an IPv4 network such as 0.0.0.0/0, not {cidr!r}",
            field="source_cidr",
        ) from None


def _ports(
    protocol: Protocol, start_port: int | None, end_port: int | None
) -> tuple[int | None, int | None]:
    """Canonical (start, end): a single port may be given as start only."""
    if protocol in ("icmp", "all"):
        require(
            start_port is None and end_port is None,
            f"{protocol} rules take no ports",
            field="start_port",
        )
        return None, None
    if start_port is None:
        raise Validation(f"{protocol} rules need a start_port", field="start_port")
    end = start_port if end_port is None else end_port
    require(
        MIN_PORT <= start_port <= MAX_PORT,
        f"start_port must be {MIN_PORT}..{MAX_PORT}",
        field="start_port",
    )
    require(
        MIN_PORT <= end <= MAX_PORT, f"end_port must be {MIN_PORT}..{MAX_PORT}", field="end_port"
    )
    require(start_port <= end, "start_port must not exceed end_port", field="end_port")
    return start_port, end


def _private_ports(
    start: int | None, end: int | None, private_port: int | None, private_end_port: int | None
) -> tuple[int, int]:
    """A port forwarding rule's private range: as long as its public one."""
    if start is None or end is None:
        raise Validation("port_forwarding needs tcp or udp ports", field="start_port")
    if private_port is None:  # the same ports on the VM
        private_port = start
    count = end - start + 1
    require(
        count <= MAX_FORWARDED_PORTS,
        f"port_forwarding forwards at most {MAX_FORWARDED_PORTS} ports",
        field="end_port",
    )
    private_end = private_port + count - 1 if private_end_port is None else private_end_port
    require(
        private_end - private_port + 1 == count,
        f"private_end_port must make the private range {count} ports long, as the public one",
        field="private_end_port",
    )
    require(
        private_port >= MIN_PORT and private_end <= MAX_PORT,
        f"private ports must be {MIN_PORT}..{MAX_PORT}",
        field="private_end_port",
    )
    return private_port, private_end


class NetworkRule(Aggregate):
    entity = "rule"

    class Created(Aggregate.Created):
        """v2 added private_port and private_end_port (port forwarding's
        target range; rules recorded before forwarded to the same ports)."""

        network_id: UUID
        kind: RuleKind
        protocol: Protocol
        source_cidr: str | None
        start_port: int | None
        end_port: int | None
        public_ip_id: UUID | None
        private_ip: str | None
        private_port: int | None
        private_end_port: int | None

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            forwarding = state.get("kind") == "port_forwarding"
            state["private_port"] = state.get("start_port") if forwarding else None
            state["private_end_port"] = state.get("end_port") if forwarding else None

    @event(Created)
    def __init__(
        self,
        network_id: UUID,
        kind: RuleKind,
        protocol: Protocol,
        source_cidr: str | None,
        start_port: int | None,
        end_port: int | None,
        public_ip_id: UUID | None,
        private_ip: str | None,
        private_port: int | None,
        private_end_port: int | None,
    ) -> None:
        self.private_port = private_port
        self.private_end_port = private_end_port
        self.network_id = network_id
        self.kind: RuleKind = kind
        self.protocol: Protocol = protocol
        self.source_cidr = source_cidr
        self.start_port = start_port
        self.end_port = end_port
        self.public_ip_id = public_ip_id
        self.private_ip = private_ip
        self.error: str | None = None
        self.state: RuleState = "Adding"

    @classmethod
    def create(
        cls,
        *,
        network_id: UUID,
        kind: RuleKind,
        protocol: Protocol = "all",
        source_cidr: str | None = None,
        start_port: int | None = None,
        end_port: int | None = None,
        public_ip_id: UUID | None = None,
        private_ip: str | None = None,
        private_port: int | None = None,
        private_end_port: int | None = None,
        id: UUID | None = None,  # the library's keyword
    ) -> NetworkRule:
        require(kind in KINDS, "kind must be firewall, port_forwarding or static_nat", field="kind")
        require(protocol in PROTOCOLS, "protocol must be tcp, udp, icmp or all", field="protocol")
        if kind == "static_nat":
            # One-to-one NAT maps the whole address, never single protocols or ports.
            require(protocol == "all", "static_nat rules use protocol all", field="protocol")
        start, end = _ports(protocol, start_port, end_port)
        private: tuple[int | None, int | None] = (None, None)
        if kind == "port_forwarding":
            require(start is not None, "port_forwarding needs tcp or udp ports", field="protocol")
            private = _private_ports(start, end, private_port, private_end_port)
        else:
            require(
                private_port is None and private_end_port is None,
                f"{kind} rules take no private ports",
                field="private_port",
            )
        if kind == "firewall":
            require(
                source_cidr is not None, "firewall rules need a source_cidr", field="source_cidr"
            )
            require(private_ip is None, "firewall rules take no private_ip", field="private_ip")
        else:
            require(private_ip is not None, f"{kind} needs a private_ip", field="private_ip")
        if kind == "static_nat":
            require(
                public_ip_id is not None, "static_nat needs a public_ip_id", field="public_ip_id"
            )
        created: NetworkRule = cls._create(
            cls.Created,
            id=id,
            network_id=network_id,
            kind=kind,
            protocol=protocol,
            source_cidr=None if source_cidr is None else _source_cidr(source_cidr),
            start_port=start,
            end_port=end,
            public_ip_id=public_ip_id,
            private_ip=None if private_ip is None else str(parse_address(private_ip, "private_ip")),
            private_port=private[0],
            private_end_port=private[1],
        )
        return created

    def activate(self) -> None:
        self.require_state(["Adding"], "activate")
        self._activated()

    def revoke(self) -> None:
        # A rule that failed to apply may still be half-programmed: revoke cleans up.
        self.require_state(["Adding", "Active", "Error"], "revoke")
        self._revoking()

    def mark_revoked(self) -> None:
        self.require_state(["Revoking"], "mark revoked")
        self._revoked()

    def fail(self, reason: str) -> None:
        self.require_state(["Adding", "Revoking"], "fail")
        require(bool(reason.strip()), "reason must not be empty", field="reason")
        self._failed(reason=reason)

    def record_drift(self, detail: str) -> None:
        """The reconciler found the rule missing on its router and put it back."""
        self.require_state(["Active"], "record drift on")
        require(bool(detail.strip()), "detail must not be empty", field="detail")
        self._drift_repaired(detail=detail)

    @event("DriftRepaired")
    def _drift_repaired(self, detail: str) -> None:
        self.last_drift = detail

    @event("Activated")
    def _activated(self) -> None:
        self.state = "Active"

    @event("Revoking")
    def _revoking(self) -> None:
        self.state = "Revoking"

    @event("Revoked")
    def _revoked(self) -> None:
        self.state = "Revoked"

    @event("Failed")
    def _failed(self, reason: str) -> None:
        self.error = reason
        self.state = "Error"
