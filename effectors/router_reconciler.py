"""The reconciler's round over virtual routers: each router brought back to
what the read models say, and every Active rule found missing reported.

A rule deleted behind the engine's back (`nft delete rule ...`, a flushed
table, a router namespace gone with a rebooted host) is put back by the
same ensure() a rule's work uses, and reported as `drift.network_rule`
(recorded on the rule as `network_rule.drift_repaired`) and logged. Rules
still Adding or Revoking are their own work's business and only kept
as the read models say. A round's read can be older than a rule's own
work that ran meanwhile; the router's lock and `network.newest` (the
versions acted on, in rule_versions.py) keep the round from undoing it.
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
from cloud_engine.effectors.network.ruleset import rule_comment

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

log = structlog.get_logger("effectors.reconciler")


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
                done = await asyncio.to_thread(network.ensure_router_checked, executor, plan)
            except network.ERRORS as e:
                log.warning("router_reconcile_failed", network_id=str(net.id), error=str(e))
                continue
            if not done.repaired:
                continue
            log.warning("router_drift_repaired", network_id=str(net.id), repaired=done.repaired)
            # The rules as programmed: a newer act than this round's read wins.
            for rule in done.plan.rules:
                if rule.state == "Active" and rule_comment(str(rule.id)) in done.missing:
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
