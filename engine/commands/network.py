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
from cloud_engine.engine.virtual.network import Isolation, Network
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
        id=cmd.id,
    )
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
    uow.get(Network, cmd.network_id).destroy()
    return Outcome(aggregate_id=cmd.network_id)


# IP addresses -------------------------------------------------------------------


class AllocateIp(Command, frozen=True, kw_only=True):
    network_id: UUID
    owner_id: UUID | None = None
    address: Address | None = None
    ip_id: UUID | None = None


class ReleaseIp(Command, frozen=True, kw_only=True):
    ip_id: UUID


@handles(AllocateIp)
def allocate_ip(uow: UnitOfWork, cmd: AllocateIp) -> Outcome:
    network = uow.get(Network, cmd.network_id)
    # A chosen id already in use is refused before the network hands out an
    # address for it, so the command does not half-apply.
    require_new_id(uow, cmd.ip_id)
    ip_id = uuid4() if cmd.ip_id is None else cmd.ip_id
    address = network.allocate_ip(ip_id, cmd.owner_id, cmd.address)
    uow.add(
        IpAddress.create(network_id=network.id, address=address, owner_id=cmd.owner_id, id=ip_id)
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
    id: UUID | None = None


class ActivateNetworkRule(Command, frozen=True, kw_only=True):
    published = False  # no sender yet: not in the contract (Command.published)
    rule_id: UUID


class RevokeNetworkRule(Command, frozen=True, kw_only=True):
    rule_id: UUID


class MarkNetworkRuleRevoked(Command, frozen=True, kw_only=True):
    published = False  # no sender yet: not in the contract (Command.published)
    rule_id: UUID


class FailNetworkRule(Command, frozen=True, kw_only=True):
    published = False  # no sender yet: not in the contract (Command.published)
    rule_id: UUID
    reason: Reason


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
        id=cmd.id,
    )
    if rule.private_ip is not None and not network.contains(rule.private_ip):
        raise Validation(f"private_ip must lie inside {network.cidr}", field="private_ip")
    if cmd.public_ip_id is not None:
        public_ip = uow.get(IpAddress, cmd.public_ip_id)
        if public_ip.state == "Released":
            raise Conflict(f"ip {public_ip.id} has been released", field="public_ip_id")
    uow.add(rule)
    return Outcome(aggregate_id=rule.id)


@handles(ActivateNetworkRule)
def activate_network_rule(uow: UnitOfWork, cmd: ActivateNetworkRule) -> Outcome:
    uow.get(NetworkRule, cmd.rule_id).activate()
    return Outcome(aggregate_id=cmd.rule_id)


@handles(RevokeNetworkRule)
def revoke_network_rule(uow: UnitOfWork, cmd: RevokeNetworkRule) -> Outcome:
    uow.get(NetworkRule, cmd.rule_id).revoke()
    return Outcome(aggregate_id=cmd.rule_id)


@handles(MarkNetworkRuleRevoked)
def mark_network_rule_revoked(uow: UnitOfWork, cmd: MarkNetworkRuleRevoked) -> Outcome:
    uow.get(NetworkRule, cmd.rule_id).mark_revoked()
    return Outcome(aggregate_id=cmd.rule_id)


@handles(FailNetworkRule)
def fail_network_rule(uow: UnitOfWork, cmd: FailNetworkRule) -> Outcome:
    uow.get(NetworkRule, cmd.rule_id).fail(cmd.reason)
    return Outcome(aggregate_id=cmd.rule_id)
