from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.network_rule import NetworkRule
from tests.unit.support import assert_refused, event_names


def firewall(**kwargs):
    args = {
        "network_id": uuid4(),
        "kind": "firewall",
        "protocol": "tcp",
        "source_cidr": "0.0.0.0/0",
        "start_port": 22,
        **kwargs,
    }
    return NetworkRule.create(**args)


def port_forwarding(**kwargs):
    args = {
        "network_id": uuid4(),
        "kind": "port_forwarding",
        "protocol": "tcp",
        "start_port": 80,
        "end_port": 81,
        "public_ip_id": uuid4(),
        "private_ip": "10.0.0.5",
        **kwargs,
    }
    return NetworkRule.create(**args)


def static_nat(**kwargs):
    args = {
        "network_id": uuid4(),
        "kind": "static_nat",
        "public_ip_id": uuid4(),
        "private_ip": "10.0.0.5",
        **kwargs,
    }
    return NetworkRule.create(**args)


def fresh(rule):
    rule.collect_events()
    return rule


# Creation -------------------------------------------------------------------------------


def test_firewall():
    rule = firewall(source_cidr="192.168.0.0/16")
    assert (rule.kind, rule.protocol, rule.source_cidr) == ("firewall", "tcp", "192.168.0.0/16")
    assert (rule.start_port, rule.end_port) == (22, 22)  # a single port is start = end
    assert rule.state == "Adding"
    assert event_names(rule) == ["Created"]


def test_firewall_icmp_and_all_take_no_ports():
    assert firewall(protocol="icmp", start_port=None).start_port is None
    assert firewall(protocol="all", start_port=None).end_port is None


def test_port_forwarding():
    public_ip_id = uuid4()
    rule = port_forwarding(public_ip_id=public_ip_id, protocol="udp")
    assert (rule.protocol, rule.start_port, rule.end_port) == ("udp", 80, 81)
    assert (rule.public_ip_id, rule.private_ip, rule.source_cidr) == (
        public_ip_id,
        "10.0.0.5",
        None,
    )


def test_port_forwarding_public_ip_optional_and_source_cidr_allowed():
    rule = port_forwarding(public_ip_id=None, source_cidr="10.9.0.0/16")
    assert (rule.public_ip_id, rule.source_cidr) == (None, "10.9.0.0/16")


def test_static_nat():
    rule = static_nat()
    assert (rule.protocol, rule.start_port, rule.end_port) == ("all", None, None)


def test_chosen_id():
    chosen = uuid4()
    assert static_nat(id=chosen).id == chosen


@pytest.mark.parametrize(
    ("factory", "kwargs", "field"),
    [
        (firewall, {"kind": "acl"}, "kind"),
        (firewall, {"protocol": "sctp"}, "protocol"),
        (firewall, {"source_cidr": None}, "source_cidr"),
        (firewall, {"source_cidr": "10.0.0.1/8"}, "source_cidr"),
        (firewall, {"source_cidr": "any"}, "source_cidr"),
        (firewall, {"private_ip": "10.0.0.5"}, "private_ip"),
        (firewall, {"start_port": None}, "start_port"),
        (firewall, {"start_port": 0}, "start_port"),
        (firewall, {"start_port": 65536}, "start_port"),
        (firewall, {"start_port": 22, "end_port": 70000}, "end_port"),
        (firewall, {"start_port": 90, "end_port": 80}, "end_port"),
        (firewall, {"protocol": "icmp", "start_port": 1}, "start_port"),
        (firewall, {"protocol": "all", "start_port": None, "end_port": 5}, "start_port"),
        (port_forwarding, {"protocol": "all", "start_port": None, "end_port": None}, "protocol"),
        (port_forwarding, {"start_port": None, "end_port": None}, "start_port"),
        (port_forwarding, {"private_ip": None}, "private_ip"),
        (port_forwarding, {"private_ip": "10.0.0"}, "private_ip"),
        (static_nat, {"public_ip_id": None}, "public_ip_id"),
        (static_nat, {"private_ip": None}, "private_ip"),
        (static_nat, {"protocol": "tcp", "start_port": 80}, "protocol"),
        (static_nat, {"start_port": 80}, "start_port"),
    ],
)
def test_validation_per_kind(factory, kwargs, field):
    with pytest.raises(Validation) as info:
        factory(**kwargs)
    assert info.value.field == field


# Lifecycle -----------------------------------------------------------------------------


def test_add_activate_revoke():
    rule = fresh(firewall())
    rule.activate()
    assert rule.state == "Active"
    rule.revoke()
    assert rule.state == "Revoking"
    rule.mark_revoked()
    assert rule.state == "Revoked"
    assert event_names(rule) == ["Activated", "Revoking", "Revoked"]


def test_failure_while_adding_then_revoke():
    rule = fresh(static_nat())
    rule.fail("router unreachable")
    assert (rule.state, rule.error) == ("Error", "router unreachable")
    rule.revoke()
    rule.mark_revoked()
    assert event_names(rule) == ["Failed", "Revoking", "Revoked"]


def test_failure_while_revoking():
    rule = fresh(port_forwarding())
    rule.activate()
    rule.revoke()
    rule.fail("timeout")
    assert rule.state == "Error"


def test_revoke_while_adding():
    rule = fresh(firewall())
    rule.revoke()
    assert rule.state == "Revoking"


def test_fail_needs_a_reason():
    rule = fresh(firewall())
    assert assert_refused(rule, Validation, lambda: rule.fail("  ")).field == "reason"


@pytest.mark.parametrize(
    ("steps", "action"),
    [
        ([], "mark_revoked"),
        (["activate"], "activate"),
        (["activate"], "mark_revoked"),
        (["activate"], "fail"),
        (["revoke"], "activate"),
        (["revoke"], "revoke"),
        (["fail"], "activate"),
        (["fail"], "fail"),
        (["fail"], "mark_revoked"),
        (["revoke", "mark_revoked"], "activate"),
        (["revoke", "mark_revoked"], "revoke"),
        (["revoke", "mark_revoked"], "mark_revoked"),
        (["revoke", "mark_revoked"], "fail"),
    ],
)
def test_refused_transitions(steps, action):
    rule = firewall()

    def call(name):
        return rule.fail("broken") if name == "fail" else getattr(rule, name)()

    for step in steps:
        call(step)
    assert_refused(rule, InvalidTransition, lambda: call(action))
