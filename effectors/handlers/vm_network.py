"""A VM's networks on a host, and which host's DHCP knows its NICs.

Networks are realised on the host the VM runs on (a bridge, its DHCP and,
for VXLAN over a host's registered underlay, a tunnel to the zone's other
hosts), in the namespace of that host's libvirtd. A network that spans hosts
has a DHCP server on each of them, on one L2 segment; each one answers only
the MACs it was given (dhcp_known_only) and is given exactly those of the
VMs that run on its host: a MAC is added when its VM starts there (and
removed from the host it ran on before), removed when it stops, is
destroyed or expunged, and moved by a migration (removed from the source
while the guest moves, put back if it stays there, added on the
destination once it runs there). So at most one server answers any guest
(none while it moves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from cloud_engine.effectors.desired import HostView
from cloud_engine.effectors.handlers.base import shared
from cloud_engine.effectors.handlers.vm_plan import VmPlan
from cloud_engine.effectors.host_netns import NetnsError
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import host_uplink, network_spec
from cloud_engine.effectors.network.driver import (
    NetworkDriver,
    NetworkDriverError,
    NetworkNotFound,
)
from cloud_engine.effectors.network.spec import DhcpHost

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

log = structlog.get_logger("effectors.handlers.vm")


def _driver(executor: Executor, host: HostView) -> NetworkDriver:
    uri = host.libvirt_uri
    return NetworkDriver(executor.hypervisor(uri), netns=executor.netns(uri))


def realise(executor: Executor, plan: VmPlan, *, dhcp: bool = True) -> None:
    """The VM's networks on its plan's host; with dhcp, that host's DHCP
    told its NICs' addresses."""
    host = plan.host
    driver = _driver(executor, host)
    uplink = host_uplink(host, plan.zone_hosts, executor.uplink)
    for nic, network in plan.nics:
        spec = network_spec(executor.names, network, uplink)
        with shared(host.libvirt_uri, "network", spec.name):
            driver.ensure(spec)
            if dhcp:
                driver.add_dhcp_host(spec.name, DhcpHost(mac=nic.mac, ip=nic.address))


def forget(executor: Executor, plan: VmPlan, host: HostView, *, strict: bool = True) -> None:
    """The host's DHCP no longer knows the VM's NICs (their networks stay).
    Not strict: a host that does not answer is logged and skipped (its
    DHCP cannot reach the segment either, or is gone with it)."""
    if not plan.nics:
        return
    try:
        driver = _driver(executor, host)
        for nic, network in plan.nics:
            name = executor.names.network(network.id)
            with shared(host.libvirt_uri, "network", name):
                try:
                    driver.remove_dhcp_host(name, nic.mac)
                except NetworkNotFound:
                    continue  # never realised there: nothing to forget
    except (HypervisorError, NetnsError, NetworkDriverError, OSError) as e:
        if strict:
            raise
        log.warning("dhcp_forget_failed", vm_id=str(plan.vm.id), host_id=str(host.id), error=str(e))
