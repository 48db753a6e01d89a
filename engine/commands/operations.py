"""Commands that start, drive and end Operations (engine/operations).

DeployVm and VmOperation are what clients send: each creates an Operation,
takes the VM's guard (a second conflicting operation is refused with 409)
and does the first action, all in one transaction. PlaceOperation,
AdvanceOperation and FailOperation are what the engine process sends while
it drives operations; each is idempotent against the operation's recorded
state, so sending one twice, or from two engines at once, does a step once.
Every outcome names the operation (aggregate_id) and the VM (value).

What a step does is its kind's (engine/operations/registry.py): these
handlers load what a command names, create the Operation and take the
resource's guard, and leave the rest to the kind.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import msgspec

from cloud_engine.engine.commands.base import Command, Outcome, handles
from cloud_engine.engine.commands.compute import GIB, CreateVm, create_vm
from cloud_engine.engine.commands.constraints import Name
from cloud_engine.engine.commands.storage import Size
from cloud_engine.engine.lookups import load_ref, require_new_id
from cloud_engine.engine.operations import deploy_ids, guard
from cloud_engine.engine.operations.kind import OperationKind, Request
from cloud_engine.engine.operations.operation import Operation, OperationParams
from cloud_engine.engine.operations.registry import kind_of
from cloud_engine.engine.operations.vm_deploy import VmDeploy
from cloud_engine.engine.planning.candidates import Strategy
from cloud_engine.engine.unit_of_work import UnitOfWork
from cloud_engine.engine.virtual.snapshot import SnapshotKind
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
DiskGb = Annotated[int, msgspec.Meta(ge=1, le=65536)]
# The kinds clients start, by command; each is a kind in
# engine/operations/registry.py (tests/unit/test_operation_kinds.py checks).
VmOperationKind = Literal[
    "vm.start",
    "vm.stop",
    "vm.reboot",
    "vm.destroy",
    "vm.recover",
    "vm.expunge",
    "vm.migrate",
    "vm.scale",
    "vm.attach_iso",
    "vm.detach_iso",
]
VolumeOperationKind = Literal[
    "volume.attach",
    "volume.detach",
    "volume.resize",
    "volume.snapshot",
    "volume.revert",
    "volume.migrate",
]
Cpus = Annotated[int, msgspec.Meta(ge=1, le=1024)]
RamMb = Annotated[int, msgspec.Meta(ge=64, le=1 << 32)]


class DeployVm(Command, frozen=True, kw_only=True):
    account: Name
    name: Name
    zone_id: UUID
    template_id: UUID
    spec: VmSpec
    network_ids: tuple[UUID, ...] = ()
    data_disks_gb: Annotated[tuple[DiskGb, ...], msgspec.Meta(max_length=15)] = ()
    affinity_group: Name | None = None
    # How the group places its members: apart (anti-affinity) or together;
    # strict refuses a host that breaks it, best-effort only prefers.
    affinity: Literal["anti-affinity", "affinity"] = "anti-affinity"
    affinity_strict: bool = True
    host_id: UUID | None = None  # deploy on this host (still checked by the planner)
    strategy: Strategy = "first-fit"
    vm_id: UUID | None = None
    # Restarted elsewhere if its host dies (automation/ha.py), highest first.
    ha: bool = False
    ha_priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    # The guest's first-boot data (engine/virtual/guest_data.py).
    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()


class VmOperation(Command, frozen=True, kw_only=True):
    kind: VmOperationKind
    vm_id: UUID
    forced: bool = False  # vm.stop: power off instead of a guest shutdown
    host_id: UUID | None = None  # vm.start, vm.migrate: on this host
    cpus: Cpus | None = None  # vm.scale: the new vCPUs (None: unchanged)
    ram_mb: RamMb | None = None  # vm.scale: the new RAM (None: unchanged)
    iso_id: UUID | None = None  # vm.attach_iso: this ISO template
    operation_id: UUID | None = None


class VolumeOperation(Command, frozen=True, kw_only=True):
    kind: VolumeOperationKind
    volume_id: UUID
    vm_id: UUID | None = None  # volume.attach: to this VM
    new_size_bytes: Size | None = None  # volume.resize
    snapshot_id: UUID | None = None  # volume.revert: to this one; volume.snapshot: its id
    snapshot_name: Name = "snapshot"  # volume.snapshot
    snapshot_kind: SnapshotKind = "internal"  # volume.snapshot
    pool_id: UUID | None = None  # volume.migrate: to this pool
    operation_id: UUID | None = None


class PlaceOperation(Command, frozen=True, kw_only=True):
    operation_id: UUID
    host_id: UUID
    pool_ids: tuple[UUID, ...] = ()


class AdvanceOperation(Command, frozen=True, kw_only=True):
    operation_id: UUID


class FailOperation(Command, frozen=True, kw_only=True):
    operation_id: UUID
    reason: Reason
    # A step got no answer in time: what waits for an effector is failed too.
    timed_out: bool = False
    # The step the failure is about. If the operation has moved past it (another
    # engine instance did the step meanwhile), the failure is stale: ignored.
    step: str | None = None


@handles(DeployVm)
def deploy_vm(uow: UnitOfWork, cmd: DeployVm) -> Outcome:
    vm_id = cmd.vm_id or uuid4()
    if cmd.vm_id is None:
        uow.known_absent(_derived(vm_id))
    create_vm(
        uow,
        CreateVm(
            id=vm_id,
            account=cmd.account,
            name=cmd.name,
            zone_id=cmd.zone_id,
            template_id=cmd.template_id,
            spec=cmd.spec,
            network_ids=cmd.network_ids,
            affinity_group=cmd.affinity_group,
            user_data=cmd.user_data,
            ssh_keys=cmd.ssh_keys,
        ),
    )
    if cmd.ha or cmd.ha_priority:
        uow.get(VirtualMachine, vm_id).set_ha(cmd.ha, cmd.ha_priority)
    op_id = deploy_ids.operation_id(vm_id)
    sizes = (cmd.spec.root_disk_gb, *cmd.data_disks_gb)
    volume_ids = tuple(deploy_ids.volume_id(op_id, i) for i in range(len(sizes)))
    # A VM deployed from an ISO has an empty root disk (the ISO is its CD-ROM).
    from_disk_image = uow.get(VirtualMachine, vm_id).iso_id is None
    for index, (gb, volume_id) in enumerate(zip(sizes, volume_ids, strict=True)):
        root = index == 0
        uow.add(
            Volume.create(
                cmd.account,
                f"{cmd.name}-{'root' if root else f'data-{index}'}",
                cmd.zone_id,
                gb * GIB,
                "root" if root else "data",
                cmd.template_id if root and from_disk_image else None,
                id=volume_id,
            )
        )
    params = OperationParams(
        host_id=cmd.host_id,
        strategy=cmd.strategy,
        volume_ids=volume_ids,
        affinity=cmd.affinity if cmd.affinity_group else None,
        affinity_strict=cmd.affinity_strict,
    )
    kind = kind_of(VmDeploy.name)
    op = _start(uow, kind, vm_id, cmd.account, params, op_id)
    kind.begin(uow, op, uow.get(VirtualMachine, vm_id), Request())
    return Outcome(aggregate_id=op_id, value=str(vm_id))


@handles(VmOperation)
def vm_operation(uow: UnitOfWork, cmd: VmOperation) -> Outcome:
    vm = uow.get(VirtualMachine, cmd.vm_id)
    kind = kind_of(cmd.kind)
    request = Request(
        forced=cmd.forced, host_id=cmd.host_id, cpus=cmd.cpus, ram_mb=cmd.ram_mb, iso_id=cmd.iso_id
    )
    params = kind.prepare(uow, vm, request)
    op = _start(uow, kind, vm.id, vm.account, params, _operation_id(uow, cmd.operation_id))
    kind.begin(uow, op, vm, request)
    return Outcome(aggregate_id=op.id, value=str(vm.id))


@handles(VolumeOperation)
def volume_operation(uow: UnitOfWork, cmd: VolumeOperation) -> Outcome:
    volume = load_ref(uow, Volume, cmd.volume_id, "volume_id")
    kind = kind_of(cmd.kind)
    request = Request(
        vm_id=cmd.vm_id,
        new_size_bytes=cmd.new_size_bytes,
        snapshot_id=cmd.snapshot_id,
        snapshot_name=cmd.snapshot_name,
        snapshot_kind=cmd.snapshot_kind,
        pool_id=cmd.pool_id,
    )
    params = kind.prepare(uow, volume, request)
    op = _start(uow, kind, volume.id, volume.account, params, _operation_id(uow, cmd.operation_id))
    kind.begin(uow, op, volume, request)
    return Outcome(aggregate_id=op.id, value=str(volume.id))


def _derived(vm_id: UUID) -> tuple[UUID, ...]:
    """A new VM's id and the ids derived from it: its deploy and its guard."""
    return (vm_id, deploy_ids.operation_id(vm_id), guard.guard_id(vm_id))


def _operation_id(uow: UnitOfWork, chosen: UUID | None) -> UUID:
    if chosen is not None:
        return chosen
    op_id = uuid4()
    uow.known_absent((op_id,))
    return op_id


def _start(
    uow: UnitOfWork,
    kind: OperationKind[Any],
    resource_id: UUID,
    account: str,
    params: OperationParams,
    op_id: UUID,
) -> Operation:
    """The Operation created and the resource's guard taken, in the
    command's transaction: a second operation on a busy resource is refused."""
    require_new_id(uow, op_id)
    op = Operation.create(
        kind=kind.name,
        resource_type=kind.resource_type,
        resource_id=resource_id,
        account=account,
        steps=kind.steps,
        params=params,
        id=op_id,
    )
    uow.add(op)
    guard.acquire(uow, resource_id, op.id, kind.name)
    return op


@handles(PlaceOperation)
def place_operation(uow: UnitOfWork, cmd: PlaceOperation) -> Outcome:
    op = uow.get(Operation, cmd.operation_id)
    kind_of(op.kind).place(uow, op, cmd.host_id, cmd.pool_ids)
    return Outcome(aggregate_id=op.id, value=str(op.resource_id))


@handles(AdvanceOperation)
def advance_operation(uow: UnitOfWork, cmd: AdvanceOperation) -> Outcome:
    op = uow.get(Operation, cmd.operation_id)
    kind_of(op.kind).advance(uow, op)
    return Outcome(aggregate_id=op.id, value=op.status)


@handles(FailOperation)
def fail_operation(uow: UnitOfWork, cmd: FailOperation) -> Outcome:
    op = uow.get(Operation, cmd.operation_id)
    if cmd.step is not None and op.current_step != cmd.step:
        return Outcome(aggregate_id=op.id, value=op.status)
    kind = kind_of(op.kind)
    if cmd.timed_out:
        # The answer may be in the log already and the engine not yet driven
        # by it (killed, or behind on its consumer): a stop whose VM is
        # Stopped must end as a stop, its host released, not fail and keep
        # the reservation for good (found by bench/chaos.py). Advancing with
        # nothing new changes nothing, so only a step still waiting fails.
        step = op.current_step
        kind.advance(uow, op)
        if op.finished or op.current_step != step:
            return Outcome(aggregate_id=op.id, value=op.status)
    kind.fail(uow, op, cmd.reason, timed_out=cmd.timed_out)
    return Outcome(aggregate_id=op.id, value=op.status)
