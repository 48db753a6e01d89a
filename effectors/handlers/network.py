"""Network work: a network's virtual router and the rules it programs.

A network with a router (the engine gave it one: a router address and a
source NAT public IP) has it on its network node: the first host of its
zone by id, so every effector and every round agrees where it is. The
router is a namespace there (effectors/network/router.py) on the
network's bridge, which is realised on that host for it (the VXLAN device
joins it to the segment on every other host).

Every act brings the whole router to what the read models say now: the
network's rules that are Adding or Active, with the work's own rule in
(apply) or out (revoke). The router's table is replaced as a whole, under
one lock per router, so concurrent rules of one network never interleave.

Read models lag: under the lock each rule is taken at the newest version
this process has acted on (`newest`, kept in rule_versions.py), so a
stale read never undoes a newer act.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING
from uuid import UUID

import msgspec
import structlog

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.desired import HostView, IpView, NetworkView, RuleView
from cloud_engine.effectors.handlers import rule_versions
from cloud_engine.effectors.handlers.base import Handler, Reads, shared
from cloud_engine.effectors.host_netns import NetnsError
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import Unsupported, host_uplink, network_spec
from cloud_engine.effectors.network import router
from cloud_engine.effectors.network.driver import NetworkDriver, NetworkDriverError
from cloud_engine.effectors.network.router_spec import RouterRule, RouterSpec
from cloud_engine.effectors.network.ruleset import expected_comments
from cloud_engine.effectors.network.spec import SpecError

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

log = structlog.get_logger("effectors.handlers.network")

LIVE = ("Adding", "Active")


class RouterPlan(msgspec.Struct, frozen=True, kw_only=True):
    network: NetworkView
    public: NetworkView | None  # the public network its source NAT IP is on
    node: HostView | None  # the network node (None: no host in the zone)
    zone_hosts: tuple[HostView, ...] = ()
    rules: tuple[RuleView, ...] = ()  # what the router is to program
    public_ips: dict[UUID, str] = {}  # the rules' public IPs: id -> address
    rule_id: UUID | None = None  # the work's own rule

    @property
    def host_id(self) -> UUID | None:
        return None if self.node is None else self.node.id


def newest(plan: RouterPlan) -> RouterPlan:
    """The plan with every rule at the newest version acted on here, the
    plan's own views recorded as acted on. Call under the router's lock."""
    rules, public_ips = rule_versions.newest(plan.network.id, plan.rules, plan.public_ips)
    return msgspec.structs.replace(plan, rules=rules, public_ips=public_ips)


def network_node(hosts: list[HostView]) -> HostView | None:
    enabled = sorted((h for h in hosts if h.state == "Enabled"), key=lambda h: h.id)
    return enabled[0] if enabled else None


async def router_plan(
    reads: Reads, network_id: UUID, at_least: int = 0, rule: RuleView | None = None
) -> RouterPlan | None:
    models = reads.models
    network = await models.get(NetworkView, "network", network_id, at_least)
    if network is None or network.zone_id is None or not reads.serves(network.zone_id):
        return None
    public = None
    public_ips: dict[UUID, str] = {}
    if network.source_nat_ip_id is not None:
        snat = await models.get(IpView, "ip_address", network.source_nat_ip_id)
        if snat is not None:
            public = await models.get(NetworkView, "network", snat.network_id)
    rules = [r for r in await models.where(RuleView, "network_rule", "network_id", network.id)]
    if rule is not None:
        rules = [r for r in rules if r.id != rule.id] + [rule]
    for r in rules:
        if r.public_ip_id is not None and r.public_ip_id not in public_ips:
            ip = await models.get(IpView, "ip_address", r.public_ip_id)
            if ip is not None:
                public_ips[ip.id] = ip.address
    hosts = await models.where(HostView, "host", "zone_id", network.zone_id)
    return RouterPlan(
        network=network,
        public=public,
        node=network_node(hosts),
        zone_hosts=tuple(hosts),
        rules=tuple(sorted(rules, key=lambda r: r.id)),
        public_ips=public_ips,
        rule_id=None if rule is None else rule.id,
    )


async def read_router_plan(reads: Reads, item: WorkItem) -> RouterPlan | None:
    return await router_plan(reads, item.aggregate_id, item.version)


async def read_rule_plan(reads: Reads, item: WorkItem) -> RouterPlan | None:
    rule = await reads.models.get(RuleView, "network_rule", item.aggregate_id, item.version)
    if rule is None:
        return None
    return await router_plan(reads, rule.network_id, rule=rule)


def host_ns_name(executor: Executor, host: HostView) -> tuple[str | None, str | None]:
    """(the host's network namespace as commands enter it, its name if it has one)."""
    netns = executor.netns(host.libvirt_uri)
    if netns is None or not netns.startswith("/proc/"):
        return netns, netns
    pid = netns.split("/")[2]
    out = subprocess.run(
        ["ip", "netns", "identify", pid], capture_output=True, text=True, check=False
    ).stdout.split()
    return netns, (out[0] if out else None)


def router_names(network_id: UUID, host_ns: str | None) -> tuple[str, str, str, str]:
    """(router namespace, nft table, host tenant link, host public link). A
    router made for a host in a named namespace is named after it, so it
    goes with that host."""
    short = network_id.hex[:10]
    netns = f"{host_ns}-vr{short}" if host_ns else f"cevr{short}"
    return netns, f"ce_vr_{short}", f"vr{short}t", f"vr{short}p"


def router_rules(plan: RouterPlan, without: UUID | None = None) -> tuple[RouterRule, ...]:
    rules = []
    for r in plan.rules:
        # A rule's own apply is no exception: redelivered after its revoke,
        # it must not put the rule back.
        if r.id == without or r.state not in LIVE:
            continue
        public_ip = plan.public_ips.get(r.public_ip_id) if r.public_ip_id else None
        rules.append(
            RouterRule(
                id=str(r.id),
                kind=r.kind,  # type: ignore[arg-type]  # the engine's RuleKind
                protocol=r.protocol,
                public_ip=public_ip,
                source_cidr=r.source_cidr,
                start_port=r.start_port,
                end_port=r.end_port,
                private_ip=r.private_ip,
                private_port=r.private_port,
            )
        )
    return tuple(rules)


def router_spec(
    executor: Executor, plan: RouterPlan, host_ns: str | None, without: UUID | None
) -> RouterSpec:
    network, public = plan.network, plan.public
    if network.router_address is None or network.source_nat_ip is None:
        raise Unsupported(f"network {network.id} has no router")
    if public is None:
        raise Unsupported(f"network {network.id}: its source NAT address's network is unknown")
    netns, table, tenant_link, public_link = router_names(network.id, host_ns)
    return RouterSpec(
        netns=netns,
        table=table,
        host_tenant_link=tenant_link,
        host_public_link=public_link,
        tenant_bridge=executor.names.bridge(network.id),
        public_bridge=executor.public_bridge,
        tenant_cidr=network.cidr,
        tenant_address=network.router_address,
        public_cidr=public.cidr,
        public_address=network.source_nat_ip,
        public_gateway=public.gateway,
        rules=router_rules(plan, without),
    )


class Ensured(msgspec.Struct, frozen=True, kw_only=True):
    repaired: list[str]  # empty: the router was as asked
    missing: frozenset[str]  # the comments of the rules that were not on it
    plan: RouterPlan  # what was programmed: the plan at its newest


def ensure_router(executor: Executor, plan: RouterPlan, without: UUID | None = None) -> list[str]:
    """The network's bridge and router on its node, as the plan says; what
    had to be repaired."""
    return ensure_router_checked(executor, plan, without).repaired


def ensure_router_checked(
    executor: Executor, plan: RouterPlan, without: UUID | None = None
) -> Ensured:
    node = plan.node
    if node is None:
        raise Unsupported(f"network {plan.network.id}: its zone has no enabled host")
    host_ns, name = host_ns_name(executor, node)
    netns = router_names(plan.network.id, name)[0]
    with shared(node.libvirt_uri, "router", netns):
        plan = newest(plan)
        spec = router_spec(executor, plan, name, without)
        have = router.table_comments(netns, spec.table) if netns in router.netns_names() else None
        want = expected_comments(spec)
        missing = set(want) if have is None else set((want - have).keys())
        uplink = host_uplink(node, plan.zone_hosts, executor.uplink)
        net_spec = network_spec(executor.names, plan.network, uplink)
        with shared(node.libvirt_uri, "network", net_spec.name):
            NetworkDriver(executor.hypervisor(node.libvirt_uri), netns=host_ns).ensure(net_spec)
        repaired = router.ensure(spec, host_ns)
    return Ensured(repaired=repaired, missing=frozenset(missing), plan=plan)


def apply_router(executor: Executor, item: WorkItem, plan: RouterPlan) -> str:
    if plan.network.router_address is None:
        return "no router"
    ensure_router(executor, plan)
    return "programmed"


def remove_router(executor: Executor, item: WorkItem, plan: RouterPlan) -> str:
    removed = False
    for host in plan.zone_hosts:
        host_ns, name = host_ns_name(executor, host)
        netns, _table, tenant_link, public_link = router_names(plan.network.id, name)
        with shared(host.libvirt_uri, "router", netns):
            removed |= router.remove(netns, host_ns, (tenant_link, public_link))
    rule_versions.forget(plan.network.id)
    return "removed" if removed else "absent"


def apply_rule(executor: Executor, item: WorkItem, plan: RouterPlan) -> str:
    ensure_router(executor, plan)
    return "Active"


def revoke_rule(executor: Executor, item: WorkItem, plan: RouterPlan) -> str:
    ensure_router(executor, plan, without=plan.rule_id)
    return "Revoked"


async def read_removal_plan(reads: Reads, item: WorkItem) -> RouterPlan | None:
    network = await reads.models.get(NetworkView, "network", item.aggregate_id, item.version)
    if network is None or network.zone_id is None or not reads.serves(network.zone_id):
        return None
    hosts = await reads.models.where(HostView, "host", "zone_id", network.zone_id)
    return RouterPlan(
        network=network, public=None, node=network_node(hosts), zone_hosts=tuple(hosts)
    )


ERRORS = (
    Unsupported,
    SpecError,
    router.RouterError,
    NetworkDriverError,
    HypervisorError,
    NetnsError,
)

HANDLERS: dict[str, Handler[RouterPlan]] = {
    "network.router": Handler(read_router_plan, apply_router, ERRORS),
    "network.router_remove": Handler(read_removal_plan, remove_router, ERRORS),
    "network_rule.apply": Handler(read_rule_plan, apply_rule, ERRORS),
    "network_rule.revoke": Handler(read_rule_plan, revoke_rule, ERRORS),
}
