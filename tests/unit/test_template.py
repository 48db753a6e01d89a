from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.template import TEMPLATE_STATES, Template
from tests.unit.support import allowed_moves, assert_refused, event_names, refused_cases


def make_template(**overrides):
    values = {
        "name": "ubuntu-24.04",
        "zone_id": uuid4(),
        "url": "https://images.example/ubuntu.qcow2",
        "format": "qcow2",
        "size_bytes": 2 << 30,
        "os_type": "Ubuntu 24.04",
        "checksum": None,
    }
    values.update(overrides)
    return Template.create(**values)


PATHS = {
    "Registered": [],
    "Downloading": ["download_requested"],
    "Ready": ["download_requested", "downloaded"],
    "Error": ["download_requested", "fail"],
    "Inactive": ["download_requested", "downloaded", "deactivate"],
}
ACTIONS = {
    "download_requested": lambda t: t.download_requested(),
    "downloaded": lambda t: t.downloaded(),
    "fail": lambda t: t.fail("404 from image server"),
    "deactivate": lambda t: t.deactivate(),
    "reactivate": lambda t: t.reactivate(),
}
# Written independently of TEMPLATE_TRANSITIONS on purpose.
ALLOWED = {
    "download_requested": {"Registered": "Downloading", "Error": "Downloading"},
    "downloaded": {"Downloading": "Ready"},
    "fail": {"Downloading": "Error"},
    "deactivate": {"Ready": "Inactive"},
    "reactivate": {"Inactive": "Ready"},
}
EVENT = {
    "download_requested": "DownloadRequested",
    "downloaded": "Downloaded",
    "fail": "Failed",
    "deactivate": "Deactivated",
    "reactivate": "Reactivated",
}


def template_in(state):
    template = make_template()
    for action in PATHS[state]:
        ACTIONS[action](template)
    template.collect_events()
    return template


def test_paths_cover_every_declared_state():
    assert set(PATHS) == set(TEMPLATE_STATES)
    for state in PATHS:
        assert template_in(state).state == state


@pytest.mark.parametrize(("action", "source", "target"), allowed_moves(ALLOWED))
def test_allowed_transition_emits_one_event(action, source, target):
    template = template_in(source)
    ACTIONS[action](template)
    assert template.state == target
    assert event_names(template) == [EVENT[action]]


@pytest.mark.parametrize(("action", "source"), refused_cases(ALLOWED, PATHS))
def test_refused_transition_records_nothing(action, source):
    template = template_in(source)
    error = assert_refused(template, InvalidTransition, lambda: ACTIONS[action](template))
    assert error.action == action


def test_create_records_values_and_given_id():
    given = uuid4()
    template = make_template(format="raw", checksum="sha256:ab12", id=given)
    assert (template.id, template.format, template.checksum) == (given, "raw", "sha256:ab12")
    assert template.state == "Registered"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"url": "ftp://images.example/x"}, "url"),
        ({"url": "https://"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"format": "vmdk"}, "format"),
        ({"size_bytes": 0}, "size_bytes"),
        ({"os_type": " "}, "os_type"),
        ({"checksum": ""}, "checksum"),
    ],
)
def test_create_validates(overrides, field):
    with pytest.raises(Validation) as info:
        make_template(**overrides)
    assert info.value.field == field


def test_failure_is_recorded_and_cleared_by_a_retry():
    template = template_in("Error")
    assert template.last_error == "404 from image server"
    template.download_requested()
    template.downloaded()
    assert (template.state, template.last_error) == ("Ready", None)


def test_fail_needs_a_reason():
    template = template_in("Downloading")
    assert assert_refused(template, Validation, lambda: template.fail(" ")).field == "reason"
