"""Commands automation records its decisions with: host liveness (Suspect,
Down, fenced, Up again), a VM's HA settings, a VM's record following
what its hypervisor shows (and an HA-enabled VM found off started again,
in the same command), and a leftover domain of a destroyed VM stopped
again (convergence).

Each is an ordinary command (an admin or any client may send it too), so
every automatic step is an event with its actor and reason in the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.operations import VmOperation, vm_operation
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.lookups import load_ref
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.release import release_on
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=1000)]


class SuspectHost(Command, frozen=True, kw_only=True):
    host_id: UUID
    reason: Reason


class RecordHostAnswered(Command, frozen=True, kw_only=True):
    host_id: UUID


class ConfirmHostDown(Command, frozen=True, kw_only=True):
    host_id: UUID
    reason: Reason
    last_heartbeat_at: datetime | None = None


class RecordHostFenced(Command, frozen=True, kw_only=True):
    host_id: UUID
    fencer: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class DeclareHostAlive(Command, frozen=True, kw_only=True):
    host_id: UUID
    reason: Reason = "declared up by an administrator"


class UpdateVmHa(Command, frozen=True, kw_only=True):
    vm_id: UUID
    ha: bool
    ha_priority: Priority = 0


class ConvergeVm(Command, frozen=True, kw_only=True):
    """Record the VM as the hypervisor shows it. expected_version: the VM
    version the observation was judged against (refused if it moved on).
    restart_if_ha (to Stopped only): an HA-enabled VM is also started
    again, in the same transaction, through a vm.start whose id is derived
    from the VM and the version it was judged at (converge_restart_id):
    sent as two commands, an automation killed between them would leave
    the VM Stopped, and asked again it is never a second start."""

    vm_id: UUID
    to: Literal["Stopped", "Running"]
    reason: Reason
    host_id: UUID | None = None  # to Running: where its domain runs
    expected_version: int | None = None
    restart_if_ha: bool = False


class RequestVmDomainStop(Command, frozen=True, kw_only=True):
    """Ask the effector again to power off the domain of a Destroyed VM
    that its host still runs (and to undefine it, of an Expunged VM whose
    domain was left behind). expected_version: as ConvergeVm's."""

    vm_id: UUID
    reason: Reason
    expected_version: int | None = None


class RecordVolumeDrift(Command, frozen=True, kw_only=True):
    volume_id: UUID
    observed: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    expected: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RecordUnknownDomain(Command, frozen=True, kw_only=True):
    host_id: UUID
    domain_id: UUID
    observed: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RecordSharedPoolUnavailable(Command, frozen=True, kw_only=True):
    host_id: UUID
    pool_id: UUID
    observed: Reason


@handles(RecordVolumeDrift)
def record_volume_drift(uow: UnitOfWork, cmd: RecordVolumeDrift) -> Outcome:
    load_ref(uow, Volume, cmd.volume_id, "volume_id").observe_drift(cmd.observed, cmd.expected)
    return Outcome(aggregate_id=cmd.volume_id)


@handles(RecordUnknownDomain)
def record_unknown_domain(uow: UnitOfWork, cmd: RecordUnknownDomain) -> Outcome:
    host = load_ref(uow, Host, cmd.host_id, "host_id")
    host.unknown_domain_observed(cmd.domain_id, cmd.observed)
    return Outcome(aggregate_id=cmd.host_id)


@handles(RecordSharedPoolUnavailable)
def record_shared_pool_unavailable(uow: UnitOfWork, cmd: RecordSharedPoolUnavailable) -> Outcome:
    load_ref(uow, StoragePool, cmd.pool_id, "pool_id")
    host = load_ref(uow, Host, cmd.host_id, "host_id")
    host.shared_pool_unavailable(cmd.pool_id, cmd.observed)
    return Outcome(aggregate_id=cmd.host_id)


@handles(SuspectHost)
def suspect_host(uow: UnitOfWork, cmd: SuspectHost) -> Outcome:
    load_ref(uow, Host, cmd.host_id, "host_id").suspect(cmd.reason)
    return Outcome(aggregate_id=cmd.host_id)


@handles(RecordHostAnswered)
def record_host_answered(uow: UnitOfWork, cmd: RecordHostAnswered) -> Outcome:
    load_ref(uow, Host, cmd.host_id, "host_id").answered()
    return Outcome(aggregate_id=cmd.host_id)


@handles(ConfirmHostDown)
def confirm_host_down(uow: UnitOfWork, cmd: ConfirmHostDown) -> Outcome:
    load_ref(uow, Host, cmd.host_id, "host_id").confirm_down(cmd.reason, cmd.last_heartbeat_at)
    return Outcome(aggregate_id=cmd.host_id)


@handles(RecordHostFenced)
def record_host_fenced(uow: UnitOfWork, cmd: RecordHostFenced) -> Outcome:
    load_ref(uow, Host, cmd.host_id, "host_id").record_fenced(cmd.fencer)
    return Outcome(aggregate_id=cmd.host_id)


@handles(DeclareHostAlive)
def declare_host_alive(uow: UnitOfWork, cmd: DeclareHostAlive) -> Outcome:
    load_ref(uow, Host, cmd.host_id, "host_id").declare_alive(cmd.reason)
    return Outcome(aggregate_id=cmd.host_id)


@handles(UpdateVmHa)
def update_vm_ha(uow: UnitOfWork, cmd: UpdateVmHa) -> Outcome:
    load_ref(uow, VirtualMachine, cmd.vm_id, "vm_id").set_ha(cmd.ha, cmd.ha_priority)
    return Outcome(aggregate_id=cmd.vm_id)


def _unchanged_vm(uow: UnitOfWork, vm_id: UUID, expected_version: int | None) -> VirtualMachine:
    """The VM, if still at the version the observation was judged against
    and held by no operation; refused (Conflict) otherwise."""
    vm = load_ref(uow, VirtualMachine, vm_id, "vm_id")
    if expected_version is not None and vm.version != expected_version:
        raise Conflict(
            f"vm {vm.id} is at version {vm.version}, observed at {expected_version}",
            owner=vm.id,
        )
    guard = uow.find(ResourceGuard, guard_id(vm.id))
    if guard is not None and guard.operation_id is not None:
        # The operation's own effector result will bring the record up to date.
        raise Conflict(
            f"vm {vm.id} is held by operation {guard.operation_id} ({guard.operation_kind})",
            owner=vm.id,
        )
    return vm


@handles(RequestVmDomainStop)
def request_vm_domain_stop(uow: UnitOfWork, cmd: RequestVmDomainStop) -> Outcome:
    _unchanged_vm(uow, cmd.vm_id, cmd.expected_version).request_domain_stop(cmd.reason)
    return Outcome(aggregate_id=cmd.vm_id)


def converge_restart_id(vm_id: UUID, version: int) -> UUID:
    """The one vm.start convergence asks for an HA-enabled VM found off
    (version: the VM's, as it was judged Running; found off again later,
    it is judged at another version)."""
    return uuid.uuid5(vm_id, f"converge-start:{version}")


@handles(ConvergeVm)
def converge_vm(uow: UnitOfWork, cmd: ConvergeVm) -> Outcome:
    """Outcome: the VM, and (restart_if_ha) its vm.start's id as the value
    (None: not HA-enabled)."""
    restart = (lambda vm: converge_restart_id(vm.id, vm.version)) if cmd.restart_if_ha else None
    return converge(uow, cmd, restart)


def converge(
    uow: UnitOfWork,
    cmd: ConvergeVm,
    restart: Callable[[VirtualMachine], UUID] | None = None,
) -> Outcome:
    """ConvergeVm's work, for its handler and for commands that record a VM
    Stopped and restart it if HA-enabled (RecoverLateOnHa). restart: the
    id of that vm.start, derived from the VM as judged (before this moves
    its version on), so asking again never makes a second start; None: no
    restart. Outcome: the VM, and the vm.start's id as the value if one
    was asked."""
    if restart is not None and cmd.to != "Stopped":
        raise Validation("only a VM converged to Stopped is restarted", field="restart_if_ha")
    vm = _unchanged_vm(uow, cmd.vm_id, cmd.expected_version)
    start = restart(vm) if restart is not None else None
    # An unsettled VM (a stop that timed out) may still hold its last host,
    # and one whose live migration timed out its destination too.
    last = vm.last_host_id if vm.is_unsettled() else None
    target = vm.migration_target_id if vm.is_unsettled() else None
    if cmd.to == "Stopped":
        held = vm.host_id or last
        vm.converge("Stopped", cmd.reason)
        release_on(uow, held, vm)
        release_on(uow, target, vm)
    else:
        if cmd.host_id is None:
            raise Conflict(f"converging vm {vm.id} to Running needs the host it runs on")
        host = load_ref(uow, Host, cmd.host_id, "host_id")
        if vm.id not in host.reservations:
            host.reserve(vm.id, vm.spec.cpus, vm.spec.ram_mb)
        for held_before in (last, target):
            if held_before is not None and held_before != host.id:
                release_on(uow, held_before, vm)
        vm.converge("Running", cmd.reason, cmd.host_id)
    if start is None or not vm.ha:
        return Outcome(aggregate_id=vm.id)
    vm_operation(uow, VmOperation(kind="vm.start", vm_id=vm.id, operation_id=start))
    return Outcome(aggregate_id=vm.id, value=str(start))
