"""The virtual router's nftables table, as rendered from its spec (the
programming itself: tests/integration/effectors/test_router.py)."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from cloud_engine.effectors.network.router_spec import RouterRule, RouterSpec, validate_router
from cloud_engine.effectors.network.ruleset import expected_comments, render
from cloud_engine.effectors.network.spec import SpecError

RULE = str(uuid.UUID(int=1))


def spec(*rules: RouterRule) -> RouterSpec:
    return RouterSpec(
        netns="ce-vr-x",
        table="ce_vr_x",
        host_tenant_link="vrxt",
        host_public_link="vrxp",
        tenant_bridge="cebrx",
        public_bridge="cepublic",
        tenant_cidr="10.1.0.0/24",
        tenant_address="10.1.0.254",
        public_cidr="100.64.1.0/24",
        public_address="100.64.1.2",
        public_gateway="100.64.1.1",
        rules=rules,
    )


def test_egress_only():
    text = render(spec())
    assert 'ip saddr 10.1.0.0/24 snat to 100.64.1.2 comment "egress"' in text
    # Replaced as a whole: declared, deleted, written, in one script.
    assert text.startswith("table ip ce_vr_x\ndelete table ip ce_vr_x\ntable ip ce_vr_x {")
    assert expected_comments(spec()) == {"egress": 1, "base": 3}


def test_port_forwarding_is_one_rule_a_port_with_its_offset():
    rule = RouterRule(
        id=RULE,
        kind="port_forwarding",
        protocol="tcp",
        public_ip="100.64.1.9",
        start_port=8080,
        end_port=8082,
        private_ip="10.1.0.5",
        private_port=80,
    )
    text = render(spec(rule))
    for public, private in ((8080, 80), (8081, 81), (8082, 82)):
        assert f"th dport {public} dnat to 10.1.0.5:{private}" in text
    assert expected_comments(spec(rule))[f"rule:{RULE}"] == 3
    assert spec(rule).public_ips == ("100.64.1.9",)


def test_firewall_walls_its_public_ip():
    rule = RouterRule(
        id=RULE,
        kind="firewall",
        protocol="tcp",
        public_ip="100.64.1.9",
        source_cidr="100.64.1.0/28",
        start_port=22,
    )
    text = render(spec(rule))
    assert "ct original ip daddr 100.64.1.9 ip saddr 100.64.1.0/28" in text
    assert "ct original proto-dst 22 accept" in text
    assert 'ct original ip daddr 100.64.1.9 drop comment "base"' in text


def test_static_nat_both_ways():
    rule = RouterRule(id=RULE, kind="static_nat", public_ip="100.64.1.9", private_ip="10.1.0.5")
    text = render(spec(rule))
    assert "ip daddr 100.64.1.9 dnat to 10.1.0.5" in text
    assert 'oifname "public" ip saddr 10.1.0.5 snat to 100.64.1.9' in text
    # Before the network's own source NAT: the first match wins.
    assert text.index("snat to 100.64.1.9") < text.index("snat to 100.64.1.2")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"table": 'x"; flush ruleset'}, "table"),
        ({"netns": "a b"}, "netns"),
        ({"tenant_address": "10.2.0.1"}, "tenant_address"),
        ({"public_bridge": "x" * 16}, "public_bridge"),
        ({"rules": (RouterRule(id="nope", kind="static_nat"),)}, "rules.id"),
        (
            {
                "rules": (
                    RouterRule(
                        id=RULE, kind="firewall", public_ip="100.64.1.9", source_cidr="10.0.0.1/8"
                    ),
                )
            },
            "rules.source_cidr",
        ),
        (
            {
                "rules": (
                    RouterRule(
                        id=RULE,
                        kind="port_forwarding",
                        protocol="tcp",
                        public_ip="100.64.1.9",
                        start_port=1,
                        end_port=500,
                        private_ip="10.1.0.5",
                        private_port=1,
                    ),
                )
            },
            "rules.end_port",
        ),
    ],
)
def test_a_bad_spec_names_its_field(change, field):
    with pytest.raises(SpecError) as e:
        validate_router(msgspec.structs.replace(spec(), **change))
    assert e.value.field == field
