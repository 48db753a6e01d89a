from uuid import uuid4

import msgspec
import pytest

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.commands.network import (
    ActivateNetworkRule,
    AllocateIp,
    AssignNetworkTag,
    CreateNetwork,
    CreateNetworkRule,
    CreateNic,
    DestroyNetwork,
    FailNetworkRule,
    ImplementNetwork,
    MarkNetworkRuleRevoked,
    PlugNic,
    ReleaseIp,
    ReleaseNetworkTag,
    ReleaseNic,
    RevokeNetworkRule,
    ShutdownNetwork,
    UnplugNic,
)
from cloud_engine.engine.errors import Conflict, InvalidTransition, NotFound, Validation
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.network_rule import NetworkRule
from cloud_engine.engine.virtual.nic import Nic, mac_for
from tests.unit.support import assert_command_refused


@pytest.fixture
def uow():
    uow = InMemoryUnitOfWork()
    zone = Zone.create("zone-1")
    uow.add(zone)
    uow.zone_id = zone.id
    uow.commit()
    return uow


def create_network(uow, cidr="10.0.0.0/24", **kwargs):
    args = {
        "account": "acct",
        "name": "net",
        "zone_id": uow.zone_id,
        "cidr": cidr,
        "physical_network_id": uuid4(),
        **kwargs,
    }
    network_id = dispatch(uow, CreateNetwork(**args)).aggregate_id
    uow.commit()
    return network_id


def event_names(uow):
    return sorted(f"{type(e).__qualname__}" for e in uow.commit())


# Networks --------------------------------------------------------------------------


def test_create_network(uow):
    chosen = uuid4()
    outcome = dispatch(
        uow,
        CreateNetwork(
            account="a",
            name="n",
            zone_id=uow.zone_id,
            cidr="10.1.0.0/16",
            isolation="none",
            id=chosen,
        ),
    )
    assert outcome.aggregate_id == chosen
    network = uow.get(Network, chosen)
    assert (network.cidr, network.gateway, network.isolation) == ("10.1.0.0/16", "10.1.0.1", "none")
    assert event_names(uow) == ["Network.Created"]


def test_create_network_needs_the_zone(uow):
    assert_command_refused(
        uow,
        NotFound,
        CreateNetwork(
            account="a", name="n", zone_id=uuid4(), cidr="10.0.0.0/24", physical_network_id=uuid4()
        ),
    )


def test_create_network_validation_adds_nothing(uow):
    error = assert_command_refused(
        uow,
        Validation,
        CreateNetwork(
            account="a",
            name="n",
            zone_id=uow.zone_id,
            cidr="10.0.0.0/33",
            physical_network_id=uuid4(),
        ),
    )
    assert error.field == "cidr"
    assert list(uow.aggregates) == [uow.zone_id]


def test_network_lifecycle(uow):
    network_id = create_network(uow)
    assert dispatch(uow, AssignNetworkTag(network_id=network_id, tag=42)).value == 42
    dispatch(uow, ShutdownNetwork(network_id=network_id))
    assert dispatch(uow, ReleaseNetworkTag(network_id=network_id)).value == 42
    dispatch(uow, DestroyNetwork(network_id=network_id))
    assert uow.get(Network, network_id).state == "Destroyed"
    assert len(uow.commit()) == 4


def test_implement_network_without_isolation(uow):
    network_id = create_network(uow, isolation="none", physical_network_id=None)
    dispatch(uow, ImplementNetwork(network_id=network_id))
    assert uow.get(Network, network_id).state == "Implemented"


def test_network_commands_refused(uow):
    network_id = create_network(uow)
    assert_command_refused(uow, Conflict, ImplementNetwork(network_id=network_id))
    assert_command_refused(uow, InvalidTransition, ShutdownNetwork(network_id=network_id))
    assert_command_refused(uow, InvalidTransition, ReleaseNetworkTag(network_id=network_id))
    assert_command_refused(uow, NotFound, DestroyNetwork(network_id=uuid4()))
    assert_command_refused(uow, NotFound, DestroyNetwork(network_id=uow.zone_id))  # another type


def test_tag_constraint_applies_when_decoding():
    raw = msgspec.json.encode({"network_id": str(uuid4()), "tag": 0})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=AssignNetworkTag)


def test_unknown_fields_are_rejected_when_decoding():
    raw = msgspec.json.encode({"network_id": str(uuid4()), "ip": "10.0.0.2"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=AllocateIp)


# IP addresses ------------------------------------------------------------------------


def test_allocate_ip_creates_the_ip_aggregate_with_the_same_id(uow):
    network_id = create_network(uow)
    owner = uuid4()
    outcome = dispatch(uow, AllocateIp(network_id=network_id, owner_id=owner))
    assert outcome.value == "10.0.0.2"
    ip = uow.get(IpAddress, outcome.aggregate_id)
    assert (ip.network_id, ip.address, ip.owner_id, ip.state) == (
        network_id,
        "10.0.0.2",
        owner,
        "Allocated",
    )
    assert uow.get(Network, network_id).allocated["10.0.0.2"] == ip.id
    events = uow.commit()
    assert sorted(type(e).__qualname__ for e in events) == [
        "IpAddress.Created",
        "Network.IpAllocated",
    ]
    assert {e.originator_id for e in events} == {network_id, ip.id}


def test_allocate_ip_with_chosen_id_and_address(uow):
    network_id = create_network(uow)
    ip_id = uuid4()
    outcome = dispatch(uow, AllocateIp(network_id=network_id, ip_id=ip_id, address="10.0.0.99"))
    assert (outcome.aggregate_id, outcome.value) == (ip_id, "10.0.0.99")
    assert uow.get(IpAddress, ip_id).address == "10.0.0.99"


def test_allocate_ip_refusals_leave_nothing(uow):
    network_id = create_network(uow, cidr="10.0.0.0/30")
    taken = dispatch(uow, AllocateIp(network_id=network_id)).aggregate_id
    count = len(uow.aggregates)
    assert_command_refused(uow, Conflict, AllocateIp(network_id=network_id, address="10.0.0.2"))
    assert_command_refused(uow, Validation, AllocateIp(network_id=network_id, address="10.0.0.3"))
    assert_command_refused(uow, NotFound, AllocateIp(network_id=uuid4()))
    # A chosen id that is already used must not allocate an address for it.
    assert_command_refused(uow, Conflict, AllocateIp(network_id=network_id, ip_id=taken))
    assert_command_refused(uow, Conflict, AllocateIp(network_id=network_id, ip_id=network_id))
    assert len(uow.aggregates) == count


def test_allocate_ip_exhaustion(uow):
    from cloud_engine.engine.errors import CapacityExceeded

    network_id = create_network(uow, cidr="10.0.0.0/30")
    dispatch(uow, AllocateIp(network_id=network_id))
    assert_command_refused(uow, CapacityExceeded, AllocateIp(network_id=network_id))


def test_release_ip_on_both_aggregates(uow):
    network_id = create_network(uow)
    ip_id = dispatch(uow, AllocateIp(network_id=network_id)).aggregate_id
    uow.commit()
    assert dispatch(uow, ReleaseIp(ip_id=ip_id)).value == "10.0.0.2"
    assert uow.get(IpAddress, ip_id).state == "Released"
    assert "10.0.0.2" not in uow.get(Network, network_id).allocated
    assert event_names(uow) == ["IpAddress.Released", "Network.IpReleased"]
    assert_command_refused(uow, InvalidTransition, ReleaseIp(ip_id=ip_id))
    assert_command_refused(uow, NotFound, ReleaseIp(ip_id=uuid4()))
    # The address is free again.
    assert dispatch(uow, AllocateIp(network_id=network_id)).value == "10.0.0.2"


def test_release_associated_ip_refused_on_both(uow):
    network_id = create_network(uow)
    ip_id = dispatch(uow, AllocateIp(network_id=network_id)).aggregate_id
    dispatch(uow, CreateNic(vm_id=uuid4(), network_id=network_id, device_id=0, ip_id=ip_id))
    assert_command_refused(uow, InvalidTransition, ReleaseIp(ip_id=ip_id))
    assert "10.0.0.2" in uow.get(Network, network_id).allocated


# NICs ---------------------------------------------------------------------------------


def test_nic_with_ip_lifecycle(uow):
    network_id = create_network(uow)
    ip_id = dispatch(uow, AllocateIp(network_id=network_id)).aggregate_id
    uow.commit()
    nic_id, vm_id = uuid4(), uuid4()
    outcome = dispatch(
        uow, CreateNic(vm_id=vm_id, network_id=network_id, device_id=1, ip_id=ip_id, id=nic_id)
    )
    assert (outcome.aggregate_id, outcome.value) == (nic_id, mac_for(nic_id))
    nic = uow.get(Nic, nic_id)
    assert (nic.vm_id, nic.ip_id, nic.address, nic.device_id) == (vm_id, ip_id, "10.0.0.2", 1)
    ip = uow.get(IpAddress, ip_id)
    assert (ip.state, ip.nic_id) == ("Associated", nic_id)
    assert event_names(uow) == ["IpAddress.Associated", "Nic.Created"]
    dispatch(uow, PlugNic(nic_id=nic_id))
    assert_command_refused(uow, InvalidTransition, ReleaseNic(nic_id=nic_id))
    assert ip.state == "Associated"
    dispatch(uow, UnplugNic(nic_id=nic_id))
    dispatch(uow, ReleaseNic(nic_id=nic_id))
    assert (nic.state, ip.state, ip.nic_id) == ("Released", "Allocated", None)
    dispatch(uow, ReleaseIp(ip_id=ip_id))


def test_nic_without_ip(uow):
    network_id = create_network(uow)
    nic_id = dispatch(
        uow, CreateNic(vm_id=uuid4(), network_id=network_id, device_id=0, mac="0a:00:00:00:00:01")
    ).aggregate_id
    assert uow.get(Nic, nic_id).mac == "0a:00:00:00:00:01"
    dispatch(uow, ReleaseNic(nic_id=nic_id))
    assert uow.get(Nic, nic_id).state == "Released"


def test_create_nic_refusals_change_nothing(uow):
    network_id = create_network(uow)
    other_network = create_network(uow, cidr="10.9.0.0/24")
    ip_id = dispatch(uow, AllocateIp(network_id=network_id)).aggregate_id
    foreign_ip = dispatch(uow, AllocateIp(network_id=other_network)).aggregate_id
    dispatch(uow, CreateNic(vm_id=uuid4(), network_id=network_id, device_id=0, ip_id=ip_id))
    count = len(uow.aggregates)

    def nic(**kwargs):
        return CreateNic(**{"vm_id": uuid4(), "network_id": network_id, "device_id": 1, **kwargs})

    assert_command_refused(uow, InvalidTransition, nic(ip_id=ip_id))  # already associated
    assert assert_command_refused(uow, Validation, nic(ip_id=foreign_ip)).field == "ip_id"
    assert uow.get(IpAddress, foreign_ip).state == "Allocated"
    assert_command_refused(uow, NotFound, nic(ip_id=uuid4()))
    assert_command_refused(uow, NotFound, nic(network_id=uuid4()))
    assert assert_command_refused(uow, Validation, nic(mac="01:00:5e:00:00:01")).field == "mac"
    assert_command_refused(uow, Conflict, nic(id=ip_id))
    assert len(uow.aggregates) == count


def test_create_nic_refused_on_shut_down_network(uow):
    network_id = create_network(uow)
    dispatch(uow, AssignNetworkTag(network_id=network_id, tag=5))
    dispatch(uow, ShutdownNetwork(network_id=network_id))
    assert_command_refused(
        uow, InvalidTransition, CreateNic(vm_id=uuid4(), network_id=network_id, device_id=0)
    )


def test_nic_transitions_refused(uow):
    network_id = create_network(uow)
    nic_id = dispatch(
        uow, CreateNic(vm_id=uuid4(), network_id=network_id, device_id=0)
    ).aggregate_id
    assert_command_refused(uow, InvalidTransition, UnplugNic(nic_id=nic_id))
    dispatch(uow, PlugNic(nic_id=nic_id))
    assert_command_refused(uow, InvalidTransition, PlugNic(nic_id=nic_id))
    assert_command_refused(uow, NotFound, PlugNic(nic_id=uuid4()))


# Rules ---------------------------------------------------------------------------------


def routed(uow, account="acct"):
    """A public network, a network with a router leaving through it, and
    a public IP of the account's: (network, public network, public IP)."""
    public = create_network(
        uow, cidr="203.0.113.0/24", account="ops", isolation="none", purpose="public",
        physical_network_id=None,
    )  # fmt: skip
    network = create_network(uow, account=account, public_network_id=public)
    ip = dispatch(uow, AllocateIp(network_id=public, account=account)).aggregate_id
    uow.commit()
    return network, public, ip


def test_a_network_with_a_router(uow):
    network_id, public_id, _ip = routed(uow)
    network, public = uow.get(Network, network_id), uow.get(Network, public_id)
    assert network.router_address == "10.0.0.254"  # the last host: the guests' way out
    assert network.source_nat_ip == "203.0.113.2"  # .1: the public network's gateway
    snat = uow.get(IpAddress, network.source_nat_ip_id)
    assert (snat.network_id, snat.account, snat.owner_id) == (public_id, "acct", network_id)
    assert public.allocated["203.0.113.2"] == snat.id
    # The router's address is never a NIC's.
    assert network.free_count == 253 - 1
    taken = {dispatch(uow, AllocateIp(network_id=network_id)).value for _ in range(252)}
    assert "10.0.0.254" not in taken and "10.0.0.1" not in taken
    # Destroyed, the network gives its source NAT address back.
    for address in taken:
        ip_id = network.allocated[address]
        dispatch(uow, ReleaseIp(ip_id=ip_id))
    dispatch(uow, DestroyNetwork(network_id=network_id))
    assert "203.0.113.2" not in public.allocated
    assert snat.state == "Released"


def test_public_ips_and_router_refusals(uow):
    network_id, public_id, _ip = routed(uow)
    # A public IP is an account's; another network's addresses are not.
    assert (
        assert_command_refused(uow, Validation, AllocateIp(network_id=public_id)).field == "account"
    )
    assert (
        assert_command_refused(
            uow, Validation, AllocateIp(network_id=network_id, account="x")
        ).field
        == "account"
    )
    # Only a public network gives routers their way out.
    other = create_network(uow, cidr="10.9.0.0/24")
    refused = assert_command_refused(
        uow, Validation, CreateNetwork(account="a", name="n", zone_id=uow.zone_id,
                                       cidr="10.8.0.0/24", isolation="none",
                                       public_network_id=other)
    )  # fmt: skip
    assert refused.field == "public_network_id"
    refused = assert_command_refused(
        uow, Validation, CreateNetwork(account="a", name="n", zone_id=uow.zone_id,
                                       cidr="10.8.0.0/24", purpose="public", isolation="VXLAN")
    )  # fmt: skip
    assert refused.field == "isolation"


def test_rule_lifecycle(uow):
    network_id, _public, public_ip = routed(uow)
    rule_id = dispatch(
        uow,
        CreateNetworkRule(
            network_id=network_id,
            kind="port_forwarding",
            protocol="tcp",
            start_port=8080,
            end_port=8081,
            public_ip_id=public_ip,
            private_ip="10.0.0.10",
            private_port=80,
        ),
    ).aggregate_id
    rule = uow.get(NetworkRule, rule_id)
    assert (rule.state, rule.start_port, rule.end_port) == ("Adding", 8080, 8081)
    assert (rule.private_port, rule.private_end_port) == (80, 81)
    dispatch(uow, ActivateNetworkRule(network_rule_id=rule_id))
    dispatch(uow, RevokeNetworkRule(rule_id=rule_id))
    dispatch(uow, MarkNetworkRuleRevoked(network_rule_id=rule_id))
    assert rule.state == "Revoked"
    assert_command_refused(
        uow, InvalidTransition, FailNetworkRule(network_rule_id=rule_id, reason="late")
    )


def test_rule_failure(uow):
    network_id, _public, public_ip = routed(uow)
    rule_id = dispatch(
        uow,
        CreateNetworkRule(
            network_id=network_id, kind="firewall", protocol="icmp", source_cidr="0.0.0.0/0",
            public_ip_id=public_ip,
        ),
    ).aggregate_id  # fmt: skip
    dispatch(uow, FailNetworkRule(network_rule_id=rule_id, reason="router down"))
    assert uow.get(NetworkRule, rule_id).error == "router down"
    assert_command_refused(uow, InvalidTransition, ActivateNetworkRule(network_rule_id=rule_id))


def test_create_rule_refusals(uow):
    network_id, public_id, public_ip = routed(uow)
    released = dispatch(uow, AllocateIp(network_id=public_id, account="acct")).aggregate_id
    dispatch(uow, ReleaseIp(ip_id=released))
    theirs = dispatch(uow, AllocateIp(network_id=public_id, account="other")).aggregate_id
    private = dispatch(uow, AllocateIp(network_id=network_id)).aggregate_id
    plain = create_network(uow, cidr="10.7.0.0/24")
    uow.commit()
    count = len(uow.aggregates)

    def nat(**kwargs):
        return CreateNetworkRule(
            **{
                "network_id": network_id,
                "kind": "static_nat",
                "public_ip_id": public_ip,
                "private_ip": "10.0.0.10",
                **kwargs,
            }
        )

    def refused(error, command):
        return assert_command_refused(uow, error, command).field

    assert refused(Validation, nat(private_ip="10.1.0.10")) == "private_ip"
    assert refused(Validation, nat(private_ip="10.0.0.254")) == "private_ip"  # the router
    assert_command_refused(uow, NotFound, nat(public_ip_id=uuid4()))
    assert refused(Conflict, nat(public_ip_id=released)) == "public_ip_id"
    assert refused(Validation, nat(public_ip_id=theirs)) == "public_ip_id"  # another account's
    assert refused(Validation, nat(public_ip_id=private)) == "public_ip_id"  # not public
    assert refused(Validation, nat(public_ip_id=None)) == "public_ip_id"
    assert refused(Conflict, nat(network_id=plain)) == "network_id"  # no router
    assert_command_refused(uow, NotFound, nat(network_id=uuid4()))
    assert refused(Validation, nat(private_ip=None)) == "private_ip"
    forward = {"kind": "port_forwarding", "protocol": "tcp", "start_port": 8080, "end_port": 8081}
    assert refused(Validation, nat(**forward, private_port=80, private_end_port=80)) == (
        "private_end_port"
    )
    assert refused(Validation, nat(**forward, private_port=65535)) == "private_end_port"
    assert refused(Validation, nat(**{**forward, "end_port": 8300}, private_port=80)) == "end_port"
    assert refused(Validation, nat(private_port=80)) == "private_port"
    assert len(uow.aggregates) == count
