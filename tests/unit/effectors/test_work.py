"""Which events are work, and their operation ids."""

from __future__ import annotations

import uuid

import pytest

from bus.cloudevents import CloudEvent
from effectors.work import operation_id, work_for

VM = uuid.uuid4()


def event(ce_type: str, version: int = 4, data: bytes = b"{}") -> CloudEvent:
    return CloudEvent(
        id="x",
        source="test",
        type=ce_type,
        subject=str(VM),
        time="2026-11-21T00:00:00Z",
        position=17,
        aggregate_version=version,
        correlation_id="corr",
        data=data,
    )


@pytest.mark.parametrize(
    ("ce_type", "kind"),
    [
        ("io.cloudengine.vm.start_requested.v1", "vm.start"),
        ("io.cloudengine.vm.stop_requested.v1", "vm.stop"),
        ("io.cloudengine.vm.rebooted.v1", "vm.reboot"),
        ("io.cloudengine.vm.destroyed.v1", "vm.destroy"),
        ("io.cloudengine.vm.expunge_requested.v1", "vm.expunge"),
        ("io.cloudengine.volume.creation_requested.v1", "volume.create"),
        ("io.cloudengine.volume.resize_requested.v1", "volume.resize"),
        ("io.cloudengine.volume.revert_requested.v1", "volume.revert"),
        ("io.cloudengine.volume.destroyed.v1", "volume.delete"),
        ("io.cloudengine.template.download_requested.v1", "template.download"),
        ("io.cloudengine.snapshot.created.v1", "snapshot.create"),
    ],
)
def test_request_events_are_work(ce_type, kind):
    item = work_for(event(ce_type))
    assert item is not None
    assert item.kind == kind
    assert item.aggregate_id == VM
    assert item.version == 4
    assert item.position == 17
    assert item.correlation_id == "corr"


@pytest.mark.parametrize(
    "ce_type",
    ["io.cloudengine.vm.started.v1", "io.cloudengine.host.created.v1", "not.a.type", ""],
)
def test_other_events_are_not_work(ce_type):
    assert work_for(event(ce_type)) is None


def test_a_redelivery_is_the_same_operation_and_the_next_request_another():
    first = work_for(event("io.cloudengine.vm.start_requested.v1"))
    again = work_for(event("io.cloudengine.vm.start_requested.v1"))
    later = work_for(event("io.cloudengine.vm.start_requested.v1", version=9))
    assert first is not None and again is not None and later is not None
    assert first.operation_id == again.operation_id == operation_id(VM, 4)
    assert later.operation_id != first.operation_id


def test_a_forced_stop_is_carried():
    item = work_for(event("io.cloudengine.vm.stop_requested.v1", data=b'{"forced": true}'))
    assert item is not None and item.forced
