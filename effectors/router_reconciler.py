"""The reconciler's round over virtual routers: each router brought back to
what the read models say, and every Active rule found missing reported.

A rule deleted behind the engine's back (`nft delete rule ...`, a flushed
table, a router namespace gone with a rebooted host) is put back by the
same ensure() a rule's work uses, and reported as `drift.network_rule`
(recorded on the rule as `network_rule.drift_repaired`) and logged. Rules
still Adding or Revoking are their own work's business and only kept
as the read models say.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import structlog

from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.effectors.desired import NetworkView
from cloud_engine.effectors.handlers import network
from cloud_engine.effectors.handlers.base import Reads
from cloud_engine.effectors.network import router
from cloud_engine.effectors.network.ruleset import expected_comments, rule_comment

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

log = structlog.get_logger("effectors.reconciler")


def _repair(executor: Executor, plan: network.RouterPlan) -> tuple[list[str], set[str]]:
    """(what was repaired, the comments of the rules that were missing)."""
    node = plan.node
    assert node is not None
    _host_ns, name = network.host_ns_name(executor, node)
    spec = network.router_spec(executor, plan, name, None)
    have = None
    if spec.netns in router.netns_names():
        have = router.table_comments(spec.netns, spec.table)
    want = expected_comments(spec)
    missing = set(want) if have is None else set((want - have).keys())
    return network.ensure_router(executor, plan), missing


async def reconcile_routers(executor: Executor, reads: Reads) -> list[EffectorResult]:
    zones = {h.zone_id for h in await reads.models.hosts(reads.zones)}
    results: list[EffectorResult] = []
    for zone in sorted(zones):
        networks = await reads.models.where(NetworkView, "network", "zone_id", zone)
        for net in networks:
            if net.router_address is None or net.state == "Destroyed":
                continue
            plan = await network.router_plan(reads, net.id)
            if plan is None or plan.node is None:
                continue
            try:
                repaired, missing = await asyncio.to_thread(_repair, executor, plan)
            except network.ERRORS as e:
                log.warning("router_reconcile_failed", network_id=str(net.id), error=str(e))
                continue
            if not repaired:
                continue
            log.warning("router_drift_repaired", network_id=str(net.id), repaired=repaired)
            for rule in plan.rules:
                if rule.state == "Active" and rule_comment(str(rule.id)) in missing:
                    log.warning("network_rule_drift_repaired", network_rule_id=str(rule.id))
                    results.append(
                        EffectorResult(
                            work_id=uuid.uuid4(),  # each repair is recorded
                            kind="drift.network_rule",
                            aggregate_id=rule.id,
                            version=0,
                            outcome="succeeded",
                            host_id=plan.node.id,
                            observed=f"missing on router of network {net.id}: put back",
                            expected="Active",
                            effector=executor.effector,
                        )
                    )
    return results
