import pytest

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.commands.fabric import CreateZone, DisableZone, EnableZone
from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from tests.unit.support import assert_disable_then_enable, assert_refused


def test_zone_disable_and_enable():
    assert_disable_then_enable(Zone.create("zone-1"))


def test_zone_refuses_enable_when_enabled_without_event():
    zone = Zone.create("zone-1")
    assert_refused(zone, InvalidTransition, zone.enable)


def test_zone_refuses_disable_twice():
    zone = Zone.create("zone-1")
    zone.disable()
    assert_refused(zone, InvalidTransition, zone.disable)


def test_zone_name_required():
    with pytest.raises(Validation) as info:
        Zone.create("  ")
    assert info.value.field == "name"


def test_names_with_a_nul_are_refused():
    # The read models (PostgreSQL jsonb) could not store the event.
    with pytest.raises(Validation, match="NUL") as info:
        Zone.create("a\x00b")
    assert info.value.field == "name"


def test_zone_commands_through_handlers():
    uow = InMemoryUnitOfWork()
    created = dispatch(uow, CreateZone(name="z"))
    dispatch(uow, DisableZone(zone_id=created.aggregate_id))
    dispatch(uow, EnableZone(zone_id=created.aggregate_id))
    assert uow.get(Zone, created.aggregate_id).state == "Enabled"
    assert len(uow.commit()) == 3
