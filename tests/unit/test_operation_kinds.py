"""The operation-kind registry agrees with the published commands and with
what each kind declares."""

from typing import get_args
from uuid import uuid4

import pytest

from cloud_engine.engine.commands import dispatch
from cloud_engine.engine.commands.maintenance import HostOperationKind, PoolOperationKind
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    FailOperation,
    PlaceOperation,
    VmOperationKind,
    VolumeOperationKind,
)
from cloud_engine.engine.errors import Validation
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.operations.registry import KINDS, kind_of
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork

VM_KINDS = set(get_args(VmOperationKind))
VOLUME_KINDS = set(get_args(VolumeOperationKind))
HOST_KINDS = set(get_args(HostOperationKind))
POOL_KINDS = set(get_args(PoolOperationKind))


def test_registry_names_are_the_published_kinds_and_the_deploy() -> None:
    # vm.deploy has its own command (DeployVm), not a kind in a Literal;
    # host.ha is automation's (BeginHaRun), not started by clients.
    published = VM_KINDS | VOLUME_KINDS | HOST_KINDS | POOL_KINDS
    assert set(KINDS) == published | {"vm.deploy", "host.ha"}


def test_each_command_reaches_kinds_of_its_resource_type() -> None:
    assert {KINDS[k].resource_type for k in VM_KINDS | {"vm.deploy"}} == {"vm"}
    assert {KINDS[k].resource_type for k in VOLUME_KINDS} == {"volume"}
    assert {KINDS[k].resource_type for k in HOST_KINDS} == {"host"}
    assert {KINDS[k].resource_type for k in POOL_KINDS} == {"storage_pool"}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_kind_declares_its_name_steps_and_placement(name: str) -> None:
    kind = KINDS[name]
    assert kind.name == name
    assert kind.steps and len(set(kind.steps)) == len(kind.steps)
    # The engine places an operation whose current step is "place".
    assert kind.placed == (kind.steps[0] == "place")
    assert not kind.keeps_disks or kind.placed


def test_the_placed_kinds() -> None:
    placed = {name for name, kind in KINDS.items() if kind.placed}
    keeps = {name for name, kind in KINDS.items() if kind.keeps_disks}
    assert placed == {"vm.deploy", "vm.start", "vm.migrate"}
    assert keeps == {"vm.start", "vm.migrate"}


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(Validation, match="unknown operation kind"):
        kind_of("vm.teleport")


@pytest.mark.parametrize(
    "command",
    [
        lambda op: AdvanceOperation(operation_id=op),
        lambda op: FailOperation(operation_id=op, reason="late"),
        lambda op: PlaceOperation(operation_id=op, host_id=uuid4()),
    ],
)
def test_the_handlers_dispatch_through_the_registry(command) -> None:
    # An operation whose kind is not in the table is refused by every
    # handler that drives operations: there is no other dispatch.
    uow = InMemoryUnitOfWork()
    op = Operation.create(
        kind="vm.teleport", resource_type="vm", resource_id=uuid4(), account="a", steps=("go",)
    )
    uow.add(op)
    with pytest.raises(Validation, match=r"unknown operation kind 'vm\.teleport'"):
        dispatch(uow, command(op.id))
