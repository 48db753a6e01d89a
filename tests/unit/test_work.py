"""Which events are work, their work ids, and the table of work kinds."""

from __future__ import annotations

import uuid

import pytest

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.naming import all_event_types
from cloud_engine.bus.work import KINDS, WorkItem, work_for, work_id

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
        ("io.cloudengine.vm.domain_stop_requested.v1", "vm.domain_stop"),
        ("io.cloudengine.volume.creation_requested.v1", "volume.create"),
        ("io.cloudengine.volume.resize_requested.v1", "volume.resize"),
        ("io.cloudengine.volume.revert_requested.v1", "volume.revert"),
        ("io.cloudengine.volume.destroyed.v1", "volume.delete"),
        ("io.cloudengine.template.download_requested.v1", "template.download"),
        ("io.cloudengine.snapshot.created.v1", "snapshot.create"),
        ("io.cloudengine.network.tag_assigned.v1", "network.router"),
        ("io.cloudengine.network.destroyed.v1", "network.router_remove"),
        ("io.cloudengine.network_rule.created.v2", "network_rule.apply"),
        ("io.cloudengine.network_rule.revoking.v1", "network_rule.revoke"),
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


def test_a_redelivery_is_the_same_work_and_the_next_request_another():
    first = work_for(event("io.cloudengine.vm.start_requested.v1"))
    again = work_for(event("io.cloudengine.vm.start_requested.v1"))
    later = work_for(event("io.cloudengine.vm.start_requested.v1", version=9))
    assert first is not None and again is not None and later is not None
    assert first.work_id == again.work_id == work_id(VM, 4)
    assert later.work_id != first.work_id


def test_a_forced_stop_is_carried():
    item = work_for(event("io.cloudengine.vm.stop_requested.v1", data=b'{"forced": true}'))
    assert item is not None and item.forced


def test_work_ids_keep_their_values():
    # Results are deduplicated on them, also across an upgrade: the value
    # work ids had before the rename from operation_id (same uuid5 inputs).
    aggregate = uuid.UUID("00000000-0000-4000-8000-000000000001")
    assert work_id(aggregate, 7) == uuid.UUID("104f80c9-85b2-5e3c-95fa-555def7fb3aa")


def test_every_work_kind_is_asked_for_by_an_event_that_exists():
    events = {f"{t.aggregate}.{t.name}" for t in all_event_types()}
    for kind in KINDS.values():
        assert kind.event in events, kind.name
        assert kind.name.split(".")[0] == kind.aggregate, kind.name


def test_every_work_kinds_commands_take_its_aggregates_id_and_the_reason():
    for kind in KINDS.values():
        done = kind.done_command(VM)
        failed = kind.failed_command(VM, "no space")
        if kind.done is not None:
            assert getattr(done, f"{kind.aggregate}_id") == VM, kind.name
        if kind.failed is not None:
            assert getattr(failed, f"{kind.aggregate}_id") == VM, kind.name
            assert failed.reason == "no space", kind.name


def test_every_work_kind_has_one_effector_handler():
    from cloud_engine.effectors.handlers import HANDLERS

    assert HANDLERS.keys() == KINDS.keys()


def test_a_work_item_of_no_kind_is_refused():
    with pytest.raises(ValueError, match="not a work kind"):
        WorkItem(work_id=VM, kind="vm.teleport", aggregate_id=VM, version=1, position=1)
