"""vm.migrate: a running VM moved to the host the engine placed it on, or
a stopped one with its disks (offline, see migrate_stopped).

Live, with its disks where they are: every disk must be on a shared pool
(a host's local pool is refused: its guest would write it during the copy).
The QEMU stream goes to the destination's registered underlay address
(tcp://<address>), else wherever its libvirtd says. UNSAFE is asked for
because the engine's pool scope says the disks are shared, which libvirt
cannot tell of a plain directory (see ComputeDriver.migrate).

Whatever the outcome, the hosts are observed before anything is reported
(compute/migration.py): a migration asked again after the effector was
killed, or one libvirt reported failed, is reported as where the guest
runs: succeeded when on the destination (the engine moves the record and
the capacity), failed with libvirt's error when on the source. A VM whose
migration step timed out in the engine (unsettled between the hosts) is
only observed, never migrated again: the answer settles it.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from uuid import UUID

import structlog

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.compute.driver import ComputeDriver, DomainMissing, DomainNotRunning
from cloud_engine.effectors.compute.migration import RunsTwice, live_migrate, settle
from cloud_engine.effectors.compute.spec import DomainState, absent_domain
from cloud_engine.effectors.desired import HostView
from cloud_engine.effectors.handlers import vm_network
from cloud_engine.effectors.handlers.base import Handler, shared
from cloud_engine.effectors.handlers.vm import ERRORS, compute
from cloud_engine.effectors.handlers.vm_plan import VmPlan, read_migration_plan
from cloud_engine.effectors.hypervisor import HypervisorError
from cloud_engine.effectors.mapping import Unsupported, pool_spec
from cloud_engine.effectors.storage.motion import move_volume
from cloud_engine.effectors.storage.pools import ensure_pool
from cloud_engine.effectors.storage.volumes import StorageDriver

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

log = structlog.get_logger("effectors.vm_migrate")


class NotSettled(TimeoutError):
    """The guest runs on the destination but its networks there are not
    right yet: retried by the consumer (a TimeoutError), so the result is
    reported once they are, never as a failure that would put the record
    back on the source."""


def migrate(executor: Executor, item: WorkItem, plan: VmPlan) -> str:
    target = plan.destination
    if target is None:
        # Not asked, or redelivered after the engine settled it.
        raise Unsupported(f"vm {plan.vm.id} has no migration target")
    if plan.vm.migrating_stopped:
        return migrate_stopped(executor, plan, target)
    local = [pool.id for _, pool in plan.disks if not pool.shared]
    if local:
        raise Unsupported(
            f"vm {plan.vm.id} has disks on local pools {', '.join(map(str, local))}:"
            " live migration needs shared storage"
        )
    there = plan.on(target)
    if target.libvirt_uri == plan.host.libvirt_uri:
        # Two engine hosts on one hypervisor (a demo or test fabric): the
        # domain already runs "there"; libvirt refuses a migration to itself.
        observed: DomainState = compute(executor, plan).observe(plan.vm.id)
        if observed.state != "running":
            raise DomainNotRunning(plan.vm.id, observed.state)
        vm_network.realise(executor, there)
        return observed.state
    # The engine's step deadline passed (Error, unsettled between the hosts).
    unsettled = plan.vm.state == "Error" and plan.vm.unsettled
    if unsettled:
        where = _where_it_runs(executor, plan, target)
    else:
        where = _where_it_runs_now(executor, plan, target)
    source = executor.hypervisor(plan.host.libvirt_uri)
    destination = executor.hypervisor(target.libvirt_uri)
    if where == "source" and unsettled:
        # Asked again after the engine's deadline passed (the VM unsettled
        # between the two hosts): the engine waits for where the guest
        # runs, not for a migration nobody is waiting for any more. Its
        # source's DHCP may have forgotten it when the migration began.
        vm_network.realise(executor, plan)
        raise Unsupported(
            f"vm {plan.vm.id} stayed on host {plan.host.id}: its migration's deadline"
            " passed before it moved"
        )
    if where == "source":
        # The destination's networks exist before the guest arrives; its
        # DHCP learns the guest's NICs only once it runs there.
        vm_network.realise(executor, there, dhcp=False)
        address = target.underlay_address
        # The source's DHCP forgets the guest while it moves (each change
        # restarts a dnsmasq: 0.3-0.6 s here), not after: at no moment do
        # two hosts' DHCP know it.
        with ThreadPoolExecutor(1, thread_name_prefix="dhcp-forget") as side:
            forgetting = side.submit(vm_network.forget, executor, plan, plan.host, strict=False)
            try:
                live_migrate(
                    source,
                    destination,
                    plan.vm.id,
                    migration_uri=None if address is None else f"tcp://{address}",
                    unsafe=bool(plan.disks),
                )
            except HypervisorError as error:
                forgetting.result()
                # libvirt's error, or a host that stopped answering while
                # the hosts were observed after it: they decide, as before.
                try:
                    now = _where_it_runs_now(executor, plan, target)
                except NotSettled:
                    raise
                except BaseException:
                    # A failure all the same: the record stays on the source,
                    # whose DHCP should know the guest again if it answers.
                    with contextlib.suppress(*ERRORS):
                        vm_network.realise(executor, plan)
                    raise
                if now == "source":
                    vm_network.realise(executor, plan)  # its DHCP knows it again
                    raise
                log.warning("migration_done_despite_error", vm_id=str(plan.vm.id), error=str(error))
            except BaseException:
                forgetting.result()
                # Still on the source: its DHCP knows it again.
                vm_network.realise(executor, plan)
                raise
            else:
                forgetting.result()
    executor.fault("after-migrate")
    if not _fenced(plan.host):  # a fenced host is not asked (it may never answer)
        vm_network.forget(executor, plan, plan.host, strict=False)  # done, unless redelivered
    try:
        vm_network.realise(executor, there)
    except ERRORS as e:
        raise NotSettled(f"vm {plan.vm.id} runs on host {target.id}; its networks: {e}") from e
    return ComputeDriver(destination).observe(plan.vm.id).state


def _where_it_runs(executor: Executor, plan: VmPlan, target: HostView) -> str:
    """Where the guest of a VM unsettled between its two hosts runs. A host
    that cannot be asked, or a guest on both, is no answer: a failure would
    record it on the source, wherever it runs; so it is asked again later
    (NotSettled is retried), and the engine keeps both hosts reserved. A
    host Down and fenced runs nothing: only the other is asked, so a host
    that stays off does not hold the VM unsettled until it is back. When
    the fenced one is the source and the destination does not run the
    guest, it runs nowhere: the failure records it Running on its source,
    where HA records it Stopped (and starts it again if HA-enabled), as
    for any VM found on a fenced host after its HA run (automation/ha.py)."""
    try:
        return settle(_driver(executor, plan.host), _driver(executor, target), plan.vm.id)
    except (HypervisorError, RunsTwice) as e:
        raise NotSettled(f"vm {plan.vm.id}: where it runs cannot be told yet: {e}") from e
    except DomainMissing as e:
        if _fenced(plan.host):
            raise _nowhere(plan) from e
        raise


def _where_it_runs_now(executor: Executor, plan: VmPlan, target: HostView) -> str:
    """Where the guest of a VM still Migrating runs (its step's deadline
    not passed), a fenced host counted as running nothing. A host that
    cannot be asked is a failure unless the destination answers that it
    runs the guest: the record stays on the source, where it runs or, the
    source dead, where liveness and HA find it. If the destination runs
    it, the answer waits (NotSettled, retried until the source answers or
    is fenced): a failure would put the record on the source and free the
    destination the guest runs on."""
    try:
        return settle(_driver(executor, plan.host), _driver(executor, target), plan.vm.id)
    except HypervisorError as e:
        if _runs_on(executor, target, plan.vm.id):
            raise NotSettled(f"vm {plan.vm.id}: where it runs cannot be told yet: {e}") from e
        raise
    except DomainMissing as e:
        if _fenced(plan.host):
            raise _nowhere(plan) from e
        raise


def _nowhere(plan: VmPlan) -> Unsupported:
    """The answer when the source is fenced and the destination does not
    run the guest: the failure (the record on the fenced source, for HA)."""
    return Unsupported(
        f"vm {plan.vm.id}: its destination does not run it and its source"
        f" {plan.host.id} is fenced: it runs nowhere"
    )


def _runs_on(executor: Executor, host: HostView, vm_id: UUID) -> bool:
    """Whether host answers that it runs the guest. A host that does not
    answer either counts as not: the failure, as before any deadline, so a
    libvirtd that stays away (a Suspect host with a fresh heartbeat is
    never fenced) does not hold the zone's effector, whose consumer
    retries a NotSettled item in place. A paused incoming domain is a
    migration that never finished there: the guest is on the source."""
    try:
        return _driver(executor, host).observe(vm_id).state == "running"
    except HypervisorError:
        return False


class _PoweredOff(ComputeDriver):
    """A fenced host, as settle() sees it: no domain (nothing is asked)."""

    def observe(self, uuid: UUID) -> DomainState:
        return absent_domain(uuid)


def _fenced(host: HostView) -> bool:
    return host.liveness == "Down" and host.fenced


def _driver(executor: Executor, host: HostView) -> ComputeDriver:
    made = _PoweredOff if _fenced(host) else ComputeDriver
    return made(executor.hypervisor(host.libvirt_uri))


def migrate_stopped(executor: Executor, plan: VmPlan, target: HostView) -> str:
    """Offline: each disk on a local pool moved to the pool the engine chose
    on the destination (storage/motion.py), then the domain's definition
    removed from the source; the destination defines it at the next start."""
    source = compute(executor, plan)
    here = source.observe(plan.vm.id)
    if here.state not in ("absent", "shutoff"):
        raise Unsupported(f"vm {plan.vm.id} is {here.state} on its host, not stopped")
    from_storage = StorageDriver(executor.hypervisor(plan.host.libvirt_uri))
    to_storage = StorageDriver(executor.hypervisor(target.libvirt_uri))
    names = executor.names
    pools = {volume.id: pool for volume, pool in plan.disks}
    for volume, to_pool in plan.moves:
        from_spec, to_spec = pool_spec(names, pools[volume.id]), pool_spec(names, to_pool)
        for storage, spec in ((from_storage, from_spec), (to_storage, to_spec)):
            with shared(storage.hv.uri, "pool", spec.name):
                ensure_pool(storage.hv, spec)
        move_volume(from_storage, from_spec.name, names.volume(volume.id), to_storage, to_spec.name)
    executor.fault("after-move")
    return source.undefine(plan.vm.id).state.state


HANDLERS: dict[str, Handler[VmPlan]] = {
    "vm.migrate": Handler(read_migration_plan, migrate, ERRORS),
}
