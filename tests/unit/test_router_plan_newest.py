"""A router's rules are taken at the newest version acted on: a plan read
before another act (the reconciler's round, another rule's work) never
drops a rule just applied nor puts back a rule just revoked."""

from __future__ import annotations

import uuid

from cloud_engine.effectors.desired import NetworkView, RuleView
from cloud_engine.effectors.handlers.network import RouterPlan, newest, router_rules
from cloud_engine.effectors.handlers.rule_versions import forget

NETWORK = NetworkView(
    id=uuid.uuid4(), version=3, cidr="10.1.0.0/24", gateway="10.1.0.1", isolation="vxlan",
    state="Implemented",
)  # fmt: skip
PUBLIC_IP = uuid.uuid4()


def rule(rule_id: uuid.UUID, version: int, state: str) -> RuleView:
    return RuleView(
        id=rule_id, version=version, network_id=NETWORK.id, kind="port_forwarding",
        protocol="tcp", state=state, start_port=8080, end_port=8080, public_ip_id=PUBLIC_IP,
        private_ip="10.1.0.5", private_port=80,
    )  # fmt: skip


def plan(*rules: RuleView, own: uuid.UUID | None = None) -> RouterPlan:
    return RouterPlan(
        network=NETWORK, public=None, node=None, rules=rules,
        public_ips={PUBLIC_IP: "192.0.2.10"}, rule_id=own,
    )  # fmt: skip


def programmed(p: RouterPlan, without: uuid.UUID | None = None) -> list[str]:
    return [r.id for r in router_rules(newest(p), without)]


def test_a_read_without_a_just_applied_rule_keeps_it() -> None:
    forget(NETWORK.id)
    a = uuid.uuid4()
    assert programmed(plan(rule(a, 1, "Adding"), own=a)) == [str(a)]
    # The reconciler's round read the network's rules before A's row was in.
    assert programmed(plan()) == [str(a)]
    # Another rule's work whose read also lags keeps A beside its own.
    b = uuid.uuid4()
    assert sorted(programmed(plan(rule(b, 1, "Adding"), own=b))) == sorted([str(a), str(b)])


def test_a_read_older_than_a_revoke_does_not_put_the_rule_back() -> None:
    forget(NETWORK.id)
    a = uuid.uuid4()
    programmed(plan(rule(a, 2, "Active")))
    assert programmed(plan(rule(a, 3, "Revoking"), own=a), without=a) == []
    assert programmed(plan(rule(a, 2, "Active"))) == []


def test_an_apply_redelivered_after_its_revoke_does_not_program_the_rule() -> None:
    forget(NETWORK.id)
    a = uuid.uuid4()
    assert programmed(plan(rule(a, 4, "Revoked"), own=a)) == []


def test_a_newer_read_wins_and_a_removed_router_is_forgotten() -> None:
    forget(NETWORK.id)
    a = uuid.uuid4()
    programmed(plan(rule(a, 1, "Adding"), own=a))
    assert programmed(plan(rule(a, 5, "Revoked"))) == []
    forget(NETWORK.id)
    assert programmed(plan()) == []
