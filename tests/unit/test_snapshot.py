from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.snapshot import SNAPSHOT_STATES, Snapshot
from tests.unit.support import allowed_moves, assert_refused, event_names, refused_cases

PATHS = {
    "Creating": [],
    "Ready": ["created"],
    "BackedUp": ["created", "backed_up"],
    "Error": ["fail"],
    "Destroyed": ["created", "destroy"],
}
ACTIONS = {
    "created": lambda s: s.created(),
    "backed_up": lambda s: s.backed_up(),
    "fail": lambda s: s.fail("qemu-img failed"),
    "destroy": lambda s: s.destroy(),
}
# Written independently of SNAPSHOT_TRANSITIONS on purpose.
ALLOWED = {
    "created": {"Creating": "Ready"},
    "backed_up": {"Ready": "BackedUp"},
    "fail": {"Creating": "Error"},
    "destroy": {"Ready": "Destroyed", "BackedUp": "Destroyed", "Error": "Destroyed"},
}
EVENT = {
    "created": "CreationCompleted",
    "backed_up": "BackedUp",
    "fail": "Failed",
    "destroy": "Destroyed",
}


def snapshot_in(state, kind="external"):
    snapshot = Snapshot.create(uuid4(), "before-upgrade", kind)
    for action in PATHS[state]:
        ACTIONS[action](snapshot)
    snapshot.collect_events()
    return snapshot


def test_paths_cover_every_declared_state():
    assert set(PATHS) == set(SNAPSHOT_STATES)
    for state in PATHS:
        assert snapshot_in(state).state == state


@pytest.mark.parametrize(("action", "source", "target"), allowed_moves(ALLOWED))
def test_allowed_transition_emits_one_event(action, source, target):
    snapshot = snapshot_in(source)
    ACTIONS[action](snapshot)
    assert snapshot.state == target
    assert event_names(snapshot) == [EVENT[action]]


@pytest.mark.parametrize(("action", "source"), refused_cases(ALLOWED, PATHS))
def test_refused_transition_records_nothing(action, source):
    snapshot = snapshot_in(source)
    error = assert_refused(snapshot, InvalidTransition, lambda: ACTIONS[action](snapshot))
    assert error.action == action


def test_create_records_values_and_given_id():
    given, volume_id = uuid4(), uuid4()
    snapshot = Snapshot.create(volume_id, "s1", id=given)
    assert (snapshot.id, snapshot.volume_id, snapshot.kind) == (given, volume_id, "internal")
    assert snapshot.state == "Creating"


@pytest.mark.parametrize(
    ("name", "kind", "field"), [(" ", "internal", "name"), ("s", "full", "kind")]
)
def test_create_validates(name, kind, field):
    with pytest.raises(Validation) as info:
        Snapshot.create(uuid4(), name, kind)
    assert info.value.field == field


def test_internal_snapshots_are_not_backed_up():
    snapshot = snapshot_in("Ready", kind="internal")
    assert assert_refused(snapshot, Validation, snapshot.backed_up).field == "kind"


def test_failure_records_reason_and_needs_one():
    snapshot = snapshot_in("Creating")
    assert assert_refused(snapshot, Validation, lambda: snapshot.fail("")).field == "reason"
    snapshot.fail("no space")
    assert snapshot.last_error == "no space"
