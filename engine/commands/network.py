"""Commands on networks, their IP addresses, NICs and rules.

Handlers that touch two aggregates check everything that could refuse the
command before changing either, so a refused command leaves both untouched.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.lookups import require_new_id
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Isolation, Network, Purpose
from cloud_engine.engine.virtual.network_rule import NetworkRule, Protocol, RuleKind
from cloud_engine.engine.virtual.nic import MAX_DEVICE_ID, Nic

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Address = Annotated[str, msgspec.Meta(min_length=7, max_length=15)]
Cidr = Annotated[str, msgspec.Meta(min_length=9, max_length=18)]
Tag = Annotated[int, msgspec.Meta(ge=1, le=2**24 - 1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
DeviceId = Annotated[int, msgspec.Meta(ge=0, le=MAX_DEVICE_ID)]
Mac = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


# Networks -----------------------------------------------------------------------


class CreateNetwork(Command, frozen=True, kw_only=True):
    account: Name
    name: Name
    zone_id: UUID
    cidr: Cidr
    gateway: Address | None = None
    isolation: Isolation = "VLAN"
    physical_network_id: UUID | None = None
    id: UUID | None = None
    purpose: Purpose = "isolated"
    # The zone's public network: the network gets a virtual router that
    # leaves through a public IP allocated for it there (source NAT).
    public_network_id: UUID | None = None


class ImplementNetwork(Command, frozen=True, kw_only=True):
    network_id: UUID


class AssignNetworkTag(Command, frozen=True, kw_only=True):
    network_id: UUID
    tag: Tag


class ShutdownNetwork(Command, frozen=True, kw_only=True):
    network_id: UUID


class ReleaseNetworkTag(Command, frozen=True, kw_only=True):
    network_id: UUID


class DestroyNetwork(Command, frozen=True, kw_only=True):
    network_id: UUID


def public_network(uow: UnitOfWork, network_id: UUID, zone_id: UUID, field: str) -> Network:
    public = uow.get(Network, network_id)
    if public.purpose != "public":
        raise Validation(f"network {network_id} is not a public network", field=field)
    if public.zone_id != zone_id:
        raise Validation(f"public network {network_id} is in another zone", field=field)
    return public


@handles(CreateNetwork)
def create_network(uow: UnitOfWork, cmd: CreateNetwork) -> Outcome:
    uow.get(Zone, cmd.zone_id)
    network = Network.create(
        account=cmd.account,
        name=cmd.name,
        zone_id=cmd.zone_id,
        cidr=cmd.cidr,
        gateway=cmd.gateway,
        physical_network_id=cmd.physical_network_id,
        isolation=cmd.isolation,
        purpose=cmd.purpose,
        id=cmd.id,
    )
    if cmd.public_network_id is not None:
        if cmd.purpose != "isolated":
            raise Validation("only isolated networks have a router", field="public_network_id")
        public = public_network(uow, cmd.public_network_id, cmd.zone_id, "public_network_id")
        # The source NAT address is the network account's public IP.
        ip_id = uuid4()
        address = public.allocate_ip(ip_id, network.id)
        uow.add(
            IpAddress.create(
                network_id=public.id,
                address=address,
                owner_id=network.id,
                account=cmd.account,
                id=ip_id,
            )
        )
        network.add_router(ip_id, address)
    uow.add(network)
    return Outcome(aggregate_id=network.id)


@handles(ImplementNetwork)
def implement_network(uow: UnitOfWork, cmd: ImplementNetwork) -> Outcome:
    uow.get(Network, cmd.network_id).implement()
    return Outcome(aggregate_id=cmd.network_id)


@handles(AssignNetworkTag)
def assign_network_tag(uow: UnitOfWork, cmd: AssignNetworkTag) -> Outcome:
    uow.get(Network, cmd.network_id).assign_tag(cmd.tag)
    return Outcome(aggregate_id=cmd.network_id, value=cmd.tag)


@handles(ShutdownNetwork)
def shutdown_network(uow: UnitOfWork, cmd: ShutdownNetwork) -> Outcome:
    uow.get(Network, cmd.network_id).shutdown()
    return Outcome(aggregate_id=cmd.network_id)


@handles(ReleaseNetworkTag)
def release_network_tag(uow: UnitOfWork, cmd: ReleaseNetworkTag) -> Outcome:
    tag = uow.get(Network, cmd.network_id).release_tag()
    return Outcome(aggregate_id=cmd.network_id, value=tag)


@handles(DestroyNetwork)
def destroy_network(uow: UnitOfWork, cmd: DestroyNetwork) -> Outcome:
    network = uow.get(Network, cmd.network_id)
    network.destroy()
    # Its router's source NAT address goes back to the public network.
    if network.source_nat_ip_id is not None:
        ip = uow.get(IpAddress, network.source_nat_ip_id)
        if ip.state != "Released":
            uow.get(Network, ip.network_id).release_ip(ip.address)
            ip.release()
    return Outcome(aggregate_id=cmd.network_id)


# IP addresses -------------------------------------------------------------------


class AllocateIp(Command, frozen=True, kw_only=True):
    network_id: UUID
    owner_id: UUID | None = None
    address: Address | None = None
    ip_id: UUID | None = None
    # Whose the address is: required on a public network (a public IP),
    # refused elsewhere (an address belongs to its network's account).
    account: Name | None = None


class ReleaseIp(Command, frozen=True, kw_only=True):
    ip_id: UUID


@handles(AllocateIp)
def allocate_ip(uow: UnitOfWork, cmd: AllocateIp) -> Outcome:
    network = uow.get(Network, cmd.network_id)
    # A chosen id already in use is refused before the network hands out an
    # address for it, so the command does not half-apply.
    require_new_id(uow, cmd.ip_id)
    if network.purpose == "public" and cmd.account is None:
        raise Validation("a public IP needs the account it is for", field="account")
    if network.purpose != "public" and cmd.account not in (None, network.account):
        raise Validation(
            f"an address of network {network.id} belongs to its account", field="account"
        )
    ip_id = uuid4() if cmd.ip_id is None else cmd.ip_id
    address = network.allocate_ip(ip_id, cmd.owner_id, cmd.address)
    account = cmd.account if network.purpose == "public" else None
    uow.add(
        IpAddress.create(
            network_id=network.id,
            address=address,
            owner_id=cmd.owner_id,
            account=account,
            id=ip_id,
        )
    )
    return Outcome(aggregate_id=ip_id, value=address)


@handles(ReleaseIp)
def release_ip(uow: UnitOfWork, cmd: ReleaseIp) -> Outcome:
    ip = uow.get(IpAddress, cmd.ip_id)
    network = uow.get(Network, ip.network_id)
    ip.require_releasable()
    network.release_ip(ip.address)
    ip.release()
    return Outcome(aggregate_id=cmd.ip_id, value=ip.address)


# NICs -----------------------------------------------------------------------------


class CreateNic(Command, frozen=True, kw_only=True):
    vm_id: UUID
    network_id: UUID
    device_id: DeviceId
    ip_id: UUID | None = None
    mac: Mac | None = None
    id: UUID | None = None


class PlugNic(Command, frozen=True, kw_only=True):
    published = False  # no sender yet: not in the contract (Command.published)
    nic_id: UUID


class UnplugNic(Command, frozen=True, kw_only=True):
    published = False  # no sender yet: not in the contract (Command.published)
    nic_id: UUID


class ReleaseNic(Command, frozen=True, kw_only=True):
    nic_id: UUID


@handles(CreateNic)
def create_nic(uow: UnitOfWork, cmd: CreateNic) -> Outcome:
    network = uow.get(Network, cmd.network_id)
    network.require_state(["Allocated", "Implemented"], "add a NIC to")
    # Likewise refused before the IpAddress is associated with the new NIC.
    require_new_id(uow, cmd.id)
    ip = None if cmd.ip_id is None else uow.get(IpAddress, cmd.ip_id)
    if ip is not None:
        if ip.network_id != network.id:
            raise Validation(f"ip {ip.id} belongs to another network", field="ip_id")
        ip.require_state(["Allocated"], "associate")
    nic = Nic.create(
        vm_id=cmd.vm_id,
        network_id=network.id,
        device_id=cmd.device_id,
        ip_id=cmd.ip_id,
        address=None if ip is None else ip.address,
        mac=cmd.mac,
        id=cmd.id,
    )
    uow.add(nic)
    if ip is not None:
        ip.associate(nic.id)
    return Outcome(aggregate_id=nic.id, value=nic.mac)


@handles(PlugNic)
def plug_nic(uow: UnitOfWork, cmd: PlugNic) -> Outcome:
    uow.get(Nic, cmd.nic_id).plug()
    return Outcome(aggregate_id=cmd.nic_id)


@handles(UnplugNic)
def unplug_nic(uow: UnitOfWork, cmd: UnplugNic) -> Outcome:
    uow.get(Nic, cmd.nic_id).unplug()
    return Outcome(aggregate_id=cmd.nic_id)


@handles(ReleaseNic)
def release_nic(uow: UnitOfWork, cmd: ReleaseNic) -> Outcome:
    nic = uow.get(Nic, cmd.nic_id)
    ip = None if nic.ip_id is None else uow.find(IpAddress, nic.ip_id)
    nic.release()
    # The address stays allocated (ReleaseIp gives it back); it is only detached.
    if ip is not None and ip.state == "Associated" and ip.nic_id == nic.id:
        ip.disassociate()
    return Outcome(aggregate_id=cmd.nic_id)


# Rules ----------------------------------------------------------------------------


class CreateNetworkRule(Command, frozen=True, kw_only=True):
    network_id: UUID
    kind: RuleKind
    protocol: Protocol = "all"
    source_cidr: Cidr | None = None
    start_port: Port | None = None
    end_port: Port | None = None
    public_ip_id: UUID | None = None
    private_ip: Address | None = None
    private_port: Port | None = None
    private_end_port: Port | None = None
    id: UUID | None = None


# The effector's results (bus/work.py): the rule as `network_rule_id`.
class ActivateNetworkRule(Command, frozen=True, kw_only=True):
    network_rule_id: UUID


class RevokeNetworkRule(Command, frozen=True, kw_only=True):
    rule_id: UUID


class MarkNetworkRuleRevoked(Command, frozen=True, kw_only=True):
    network_rule_id: UUID


class FailNetworkRule(Command, frozen=True, kw_only=True):
    network_rule_id: UUID
    reason: Reason


class RecordNetworkRuleDrift(Command, frozen=True, kw_only=True):
    """The reconciler put back a rule found missing on its router."""

    network_rule_id: UUID
    detail: Reason


@handles(RecordNetworkRuleDrift)
def record_network_rule_drift(uow: UnitOfWork, cmd: RecordNetworkRuleDrift) -> Outcome:
    uow.get(NetworkRule, cmd.network_rule_id).record_drift(cmd.detail)
    return Outcome(aggregate_id=cmd.network_rule_id)


@handles(CreateNetworkRule)
def create_network_rule(uow: UnitOfWork, cmd: CreateNetworkRule) -> Outcome:
    network = uow.get(Network, cmd.network_id)
    network.require_state(["Allocated", "Implemented"], "add a rule to")
    rule = NetworkRule.create(
        network_id=network.id,
        kind=cmd.kind,
        protocol=cmd.protocol,
        source_cidr=cmd.source_cidr,
        start_port=cmd.start_port,
        end_port=cmd.end_port,
        public_ip_id=cmd.public_ip_id,
        private_ip=cmd.private_ip,
        private_port=cmd.private_port,
        private_end_port=cmd.private_end_port,
        id=cmd.id,
    )
    if network.router_address is None:
        raise Conflict(f"network {network.id} has no router to program", field="network_id")
    if cmd.public_ip_id is None:
        # Every kind acts on a public IP (a firewall guards one's ingress).
        raise Validation(f"{cmd.kind} needs a public_ip_address_id", field="public_ip_id")
    if rule.private_ip is not None and not network.contains(rule.private_ip):
        raise Validation(f"private_ip must lie inside {network.cidr}", field="private_ip")
    if rule.private_ip in (network.gateway, network.router_address):
        raise Validation("private_ip must be a guest's address", field="private_ip")
    if cmd.public_ip_id is not None:
        public_ip = uow.get(IpAddress, cmd.public_ip_id)
        if public_ip.state == "Released":
            raise Conflict(f"ip {public_ip.id} has been released", field="public_ip_id")
        if uow.get(Network, public_ip.network_id).purpose != "public":
            raise Validation(f"ip {public_ip.id} is not a public IP", field="public_ip_id")
        if public_ip.account != network.account:
            raise Validation(
                f"ip {public_ip.id} is not a public IP of account {network.account}",
                field="public_ip_id",
            )
        if public_ip.id == network.source_nat_ip_id and rule.kind == "static_nat":
            raise Conflict(
                "the router's source NAT address takes no static NAT", field="public_ip_id"
            )
    uow.add(rule)
    return Outcome(aggregate_id=rule.id)


@handles(ActivateNetworkRule)
def activate_network_rule(uow: UnitOfWork, cmd: ActivateNetworkRule) -> Outcome:
    uow.get(NetworkRule, cmd.network_rule_id).activate()
    return Outcome(aggregate_id=cmd.network_rule_id)


@handles(RevokeNetworkRule)
def revoke_network_rule(uow: UnitOfWork, cmd: RevokeNetworkRule) -> Outcome:
    uow.get(NetworkRule, cmd.rule_id).revoke()
    return Outcome(aggregate_id=cmd.rule_id)


@handles(MarkNetworkRuleRevoked)
def mark_network_rule_revoked(uow: UnitOfWork, cmd: MarkNetworkRuleRevoked) -> Outcome:
    uow.get(NetworkRule, cmd.network_rule_id).mark_revoked()
    return Outcome(aggregate_id=cmd.network_rule_id)


@handles(FailNetworkRule)
def fail_network_rule(uow: UnitOfWork, cmd: FailNetworkRule) -> Outcome:
    uow.get(NetworkRule, cmd.network_rule_id).fail(cmd.reason)
    return Outcome(aggregate_id=cmd.network_rule_id)
