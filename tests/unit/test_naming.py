"""CloudEvents types are built and parsed by bus.naming alone."""

import pytest

from cloud_engine.bus.naming import TypeName, aggregate_of, all_event_types, parse_type


def test_every_published_type_parses_back_to_its_parts():
    for event_type in all_event_types():
        parsed = parse_type(event_type.ce_type)
        assert parsed == TypeName(event_type.aggregate, event_type.name, event_type.version)
        assert parsed.ce_type == event_type.ce_type
        assert aggregate_of(parsed.event) == event_type.aggregate


def test_a_type_and_its_parts():
    parsed = parse_type("io.cloudengine.vm.start_requested.v2")
    assert parsed == TypeName("vm", "start_requested", 2)
    assert parsed.event == "vm.start_requested"


@pytest.mark.parametrize(
    "ce_type",
    [
        "com.example.vm.started.v1",
        "io.cloudengine.vm.started",
        "io.cloudengine.vm.started.v",
        "io.cloudengine.vm.started.v1x",
        "io.cloudengine.vm.started.v\u00b2",
        "io.cloudengine.vm.v1",
        "io.cloudengine..started.v1",
        "io.cloudengine.vm.disk.attached.v1",
        "x.io.cloudengine.vm.started.v1",
    ],
)
def test_types_not_of_ours_parse_to_none(ce_type):
    assert parse_type(ce_type) is None
