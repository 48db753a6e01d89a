"""Carries out one work item on a host (blocking; the service runs it in a
thread) with the handler its kind has in effectors/handlers/.

Every handler observes before it acts (the drivers are idempotent), so a
work item delivered again, or resumed after the effector was killed
half-way, does what is left and reports the same outcome. A failure becomes
a failed result carrying libvirt's error; nothing is swallowed.

The executor is what handlers share: one libvirt connection per host URI
(its worker threads and the reconciler use the same), the network namespace
each host's libvirtd runs in, the naming on the hosts, this effector's
uplink and its stop timeout.
"""

from __future__ import annotations

import os
import time
from uuid import UUID

import structlog

from cloud_engine.bus.work import WorkItem
from cloud_engine.bus.work_results import EffectorResult
from cloud_engine.effectors.compute.spec import DomainType
from cloud_engine.effectors.handlers import HANDLERS
from cloud_engine.effectors.handlers.base import Plan
from cloud_engine.effectors.host_netns import HostNamespaces
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError
from cloud_engine.effectors.mapping import (
    Uplink as Uplink,
)  # runner.effector_cli takes it from here
from cloud_engine.effectors.naming import Names

log = structlog.get_logger("effectors.executor")

# Fault injection for the crash tests: "after-define:<seconds>" sleeps between
# defining and starting a domain, "after-migrate:<seconds>" between a guest's
# arrival on its destination and its DHCP moving there, so a test can kill
# the process there.
FAULT_ENV = "CLOUD_ENGINE_EFFECTOR_FAULT"


class Executor:
    def __init__(
        self,
        effector: str,
        *,
        names: Names | None = None,
        stop_timeout_s: float = 30.0,
        uplink: Uplink | None = None,
        domain_type: DomainType = "qemu",
        public_bridge: str = "cepublic",
    ) -> None:
        self.effector = effector
        self.uplink = uplink
        # The bridge, in every host's network namespace, onto the zone's
        # public network: where virtual routers attach (CloudStack's
        # public traffic label).
        self.public_bridge = public_bridge
        # The type of every domain this effector defines (kvm where the
        # operator knows the hosts have it).
        self.domain_type: DomainType = domain_type
        self.names = names or Names()
        self.stop_timeout_s = stop_timeout_s
        self._hypervisors: dict[str, Hypervisor] = {}
        self._namespaces = HostNamespaces()

    def hypervisor(self, uri: str) -> Hypervisor:
        hv = self._hypervisors.get(uri)
        if hv is None:
            # Worker threads ask at once: one Hypervisor (one connection) per
            # URI, whoever gets here first.
            hv = self._hypervisors.setdefault(uri, Hypervisor(uri))
        return hv

    def netns(self, uri: str) -> str | None:
        """Where the host's network commands run (None: here)."""
        return self._namespaces.netns(uri)

    def close(self) -> None:
        for hv in list(self._hypervisors.values()):
            hv.close()

    def run(self, item: WorkItem, plan: Plan) -> EffectorResult:
        """Carry out a work item on the plan its kind's handler read."""
        handler = HANDLERS[item.kind]
        try:
            observed = handler.act(self, item, plan)
        except handler.errors as e:
            log.warning(
                "work_failed", kind=item.kind, aggregate_id=str(item.aggregate_id), error=str(e)
            )
            return self._result(item, plan.host_id, None, e)
        return self._result(item, plan.host_id, observed, None)

    def fault(self, point: str) -> None:
        fault = os.environ.get(FAULT_ENV, "")
        if fault.startswith(f"{point}:"):
            seconds = float(fault.split(":", 1)[1])
            log.warning("fault_injected", point=point, sleep_s=seconds)
            time.sleep(seconds)

    def _result(
        self, item: WorkItem, host_id: UUID | None, observed: str | None, error: Exception | None
    ) -> EffectorResult:
        code = error.code if isinstance(error, HypervisorError) else None
        return EffectorResult(
            work_id=item.work_id,
            kind=item.kind,
            aggregate_id=item.aggregate_id,
            version=item.version,
            outcome="failed" if error is not None else "succeeded",
            host_id=host_id,
            observed=observed,
            error=None if error is None else str(error),
            error_code=code,
            effector=self.effector,
            correlation_id=item.correlation_id,
        )
