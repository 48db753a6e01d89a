"""Commands on the fabric aggregates."""

from __future__ import annotations

from uuid import UUID

from engine.commands.base import Command, Outcome, handles
from engine.fabric.zone import Zone
from engine.unit_of_work import UnitOfWork


class CreateZone(Command, frozen=True, kw_only=True):
    name: str
    description: str = ""


class EnableZone(Command, frozen=True, kw_only=True):
    zone_id: UUID


class DisableZone(Command, frozen=True, kw_only=True):
    zone_id: UUID


@handles(CreateZone)
def create_zone(uow: UnitOfWork, cmd: CreateZone) -> Outcome:
    zone = Zone.create(cmd.name, cmd.description)
    uow.add(zone)
    return Outcome(aggregate_id=zone.id)


@handles(EnableZone)
def enable_zone(uow: UnitOfWork, cmd: EnableZone) -> Outcome:
    uow.get(Zone, cmd.zone_id).enable()
    return Outcome(aggregate_id=cmd.zone_id)


@handles(DisableZone)
def disable_zone(uow: UnitOfWork, cmd: DisableZone) -> Outcome:
    uow.get(Zone, cmd.zone_id).disable()
    return Outcome(aggregate_id=cmd.zone_id)
