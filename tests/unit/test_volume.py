from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.volume import VOLUME_STATES, Volume
from tests.unit.support import (
    allowed_moves,
    assert_refused,
    drive,
    event_names,
    refused_cases,
    replayed,
)

GIB = 1 << 30
POOL = uuid4()
VM = uuid4()
SNAP = uuid4()


def make_volume(**overrides):
    values = {
        "account": "acme",
        "name": "data-1",
        "zone_id": uuid4(),
        "size_bytes": 10 * GIB,
        "kind": "data",
        "template_id": None,
    }
    values.update(overrides)
    return Volume.create(**values)


# How to reach each (sub-)state of a data volume.
PATHS = {
    "Allocated": [],
    "Creating": [lambda v: v.create_requested(POOL)],
    "Ready": ["Creating", lambda v: v.created()],
    "Attached": ["Ready", lambda v: v.attach(VM, 1)],
    "Resizing": ["Ready", lambda v: v.resize_requested(20 * GIB)],
    "ResizingAttached": ["Attached", lambda v: v.resize_requested(20 * GIB)],
    "Reverting": ["Ready", lambda v: v.revert_requested(SNAP)],
    "RevertingAttached": ["Attached", lambda v: v.revert_requested(SNAP)],
    "Destroyed": ["Ready", lambda v: v.destroy()],
    "Error": ["Creating", lambda v: v.fail("disk full")],
    "ErrorAttached": ["ResizingAttached", lambda v: v.fail("disk full")],
}
STATE_OF = {
    "ResizingAttached": "Resizing",
    "Reverting": "Ready",
    "RevertingAttached": "Attached",
    "ErrorAttached": "Error",
}


def volume_in(state, **overrides):
    volume = make_volume(**overrides)
    drive(volume, PATHS, state)
    volume.collect_events()
    return volume


ACTIONS = {
    "create_requested": lambda v: v.create_requested(POOL),
    "created": lambda v: v.created(),
    "attach": lambda v: v.attach(VM, 2),
    "detach": lambda v: v.detach(),
    "resize_requested": lambda v: v.resize_requested(40 * GIB),
    "resized": lambda v: v.resized(),
    "revert_requested": lambda v: v.revert_requested(SNAP),
    "reverted": lambda v: v.reverted(),
    "destroy": lambda v: v.destroy(),
    "fail": lambda v: v.fail("boom"),
}

# Written independently of engine.virtual.volume.VOLUME_TRANSITIONS on purpose.
ALLOWED = {
    "create_requested": {"Allocated": "Creating"},
    "created": {"Creating": "Ready"},
    "attach": {"Ready": "Attached"},
    "detach": {"Attached": "Ready", "ErrorAttached": "Error"},
    "resize_requested": {"Ready": "Resizing", "Attached": "Resizing"},
    "resized": {"Resizing": "Ready", "ResizingAttached": "Attached"},
    "revert_requested": {"Ready": "Ready", "Attached": "Attached"},
    "reverted": {"Reverting": "Ready", "RevertingAttached": "Attached"},
    "destroy": {"Allocated": "Destroyed", "Ready": "Destroyed", "Error": "Destroyed"},
    "fail": {
        "Creating": "Error",
        "Resizing": "Error",
        "ResizingAttached": "Error",
        "Reverting": "Error",
        "RevertingAttached": "Error",
    },
}
EVENT = {
    "create_requested": "CreationRequested",
    "created": "CreationCompleted",
    "attach": "Attached",
    "detach": "Detached",
    "resize_requested": "ResizeRequested",
    "resized": "Resized",
    "revert_requested": "RevertRequested",
    "reverted": "Reverted",
    "destroy": "Destroyed",
    "fail": "Failed",
}
ALLOWED_CASES = allowed_moves(ALLOWED)
REFUSED_CASES = refused_cases(ALLOWED, PATHS)


def test_paths_cover_every_declared_state():
    assert {STATE_OF.get(s, s) for s in PATHS} == set(VOLUME_STATES)
    for name in PATHS:
        assert volume_in(name).state == STATE_OF.get(name, name)


@pytest.mark.parametrize(("action", "source", "target"), ALLOWED_CASES)
def test_allowed_transition_emits_one_event(action, source, target):
    volume = volume_in(source)
    ACTIONS[action](volume)
    assert volume.state == target
    assert event_names(volume) == [EVENT[action]]


@pytest.mark.parametrize(("action", "source"), REFUSED_CASES)
def test_refused_transition_records_nothing(action, source):
    volume = volume_in(source)
    error = assert_refused(volume, InvalidTransition, lambda: ACTIONS[action](volume))
    assert error.action == action


# Creation ------------------------------------------------------------------------


def test_create_with_given_id_and_template():
    given, template = uuid4(), uuid4()
    volume = make_volume(kind="root", template_id=template, id=given)
    assert (volume.id, volume.kind, volume.template_id, volume.state) == (
        given,
        "root",
        template,
        "Allocated",
    )
    assert (volume.pool_id, volume.vm_id, volume.device_id) == (None, None, None)
    assert replayed(volume.collect_events()).id == given


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"account": ""}, "account"),
        ({"name": " "}, "name"),
        ({"size_bytes": 0}, "size_bytes"),
        ({"size_bytes": -1}, "size_bytes"),
        ({"kind": "swap"}, "kind"),
    ],
)
def test_create_validates(overrides, field):
    with pytest.raises(Validation) as info:
        make_volume(**overrides)
    assert info.value.field == field


# Rules beyond the state table ----------------------------------------------------


def test_create_requested_records_pool():
    assert volume_in("Creating").pool_id == POOL


def test_attach_and_detach_record_the_vm():
    volume = volume_in("Attached")
    assert (volume.vm_id, volume.device_id) == (VM, 1)
    volume.detach()
    assert (volume.state, volume.vm_id, volume.device_id) == ("Ready", None, None)
    assert [e.vm_id for e in volume.collect_events()] == [VM]


@pytest.mark.parametrize(("kind", "device_id"), [("data", 0), ("root", 1), ("root", 3)])
def test_attach_checks_device_id(kind, device_id):
    volume = volume_in("Ready", kind=kind)
    error = assert_refused(volume, Validation, lambda: volume.attach(VM, device_id))
    assert error.field == "device_id"


def test_root_volume_attaches_as_device_zero_and_stays():
    volume = volume_in("Ready", kind="root")
    volume.attach(VM, 0)
    error = assert_refused(volume, Validation, volume.detach)
    assert error.field == "kind"


def test_root_volume_detaches_when_its_vm_is_expunged():
    volume = volume_in("Ready", kind="root")
    volume.attach(VM, 0)
    volume.detach(vm_expunging=True)
    volume.destroy()
    assert volume.state == "Destroyed"


@pytest.mark.parametrize("new_size", [10 * GIB, 5 * GIB])
def test_resize_only_grows(new_size):
    volume = volume_in("Ready")
    error = assert_refused(volume, Validation, lambda: volume.resize_requested(new_size))
    assert error.field == "new_size_bytes"


@pytest.mark.parametrize(
    ("source", "resume"), [("Resizing", "Ready"), ("ResizingAttached", "Attached")]
)
def test_resize_returns_to_where_it_started(source, resume):
    volume = volume_in(source)
    assert (volume.resize_to, volume.resume_state) == (20 * GIB, resume)
    volume.resized()
    assert (volume.state, volume.size_bytes) == (resume, 20 * GIB)
    assert (volume.resize_to, volume.resume_state) == (None, None)
    [event] = volume.collect_events()
    assert event.size_bytes == 20 * GIB


def test_failed_resize_keeps_the_attachment_until_detached():
    volume = volume_in("ErrorAttached")
    assert (volume.vm_id, volume.last_error, volume.size_bytes) == (VM, "disk full", 10 * GIB)
    assert_refused(volume, InvalidTransition, volume.destroy)
    volume.detach()
    assert (volume.state, volume.vm_id) == ("Error", None)
    volume.destroy()
    assert volume.state == "Destroyed"


def test_revert_is_tracked_until_reverted():
    volume = volume_in("Reverting")
    assert volume.reverting_to == SNAP
    volume.reverted()
    assert volume.reverting_to is None
    assert [e.snapshot_id for e in volume.collect_events()] == [SNAP]


def test_failed_revert_leaves_error():
    volume = volume_in("Reverting")
    volume.fail("qemu-img failed")
    assert (volume.state, volume.reverting_to) == ("Error", None)


def test_fail_needs_a_reason():
    volume = volume_in("Creating")
    assert assert_refused(volume, Validation, lambda: volume.fail("")).field == "reason"


@pytest.mark.parametrize("source", ["Ready", "Attached"])
def test_snapshot_source_allowed(source):
    volume_in(source).require_snapshot_source()


@pytest.mark.parametrize(
    "source", ["Allocated", "Creating", "Resizing", "Reverting", "Error", "Destroyed"]
)
def test_snapshot_source_refused(source):
    volume = volume_in(source)
    error = assert_refused(volume, InvalidTransition, volume.require_snapshot_source)
    assert error.action == "snapshot"


def test_replay_reproduces_the_aggregate():
    volume = make_volume()
    drive(volume, PATHS, "ResizingAttached")
    volume.resized()
    volume.detach()
    volume.revert_requested(SNAP)
    volume.reverted()
    assert vars(replayed(volume.collect_events())) == vars(volume)
