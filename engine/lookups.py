"""Lookups shared by the command handlers and the operation kinds: the
aggregates a command or a request names.

load_ref and require_enabled_zone raise NotFound naming the command's field
(zone_id, template_id, ...), where UnitOfWork.get names "id"; require_new_id
refuses a caller-chosen id that another aggregate already has.

Not in engine/commands/: the operation kinds (engine/operations/) use them
too, and engine.commands imports the kinds (its dispatch table), so a kind
importing from engine.commands would be an import cycle.
"""

from __future__ import annotations

from typing import TypeVar
from uuid import UUID

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.errors import Conflict, NotFound
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.unit_of_work import UnitOfWork

A = TypeVar("A", bound=Aggregate)


def require_new_id(uow: UnitOfWork, aggregate_id: UUID | None, *, field: str = "id") -> None:
    """Refuse a caller-chosen id that is taken, rather than overwrite or fail late.

    None (no id chosen: the aggregate will get a fresh one) always passes.
    """
    if aggregate_id is not None and uow.find(Aggregate, aggregate_id) is not None:
        raise Conflict(f"id {aggregate_id} is already in use", field=field)


def load_ref(uow: UnitOfWork, cls: type[A], aggregate_id: UUID, field: str) -> A:
    """Load an aggregate a command refers to, naming the command field if absent."""
    found = uow.find(cls, aggregate_id)
    if found is None:
        raise NotFound(f"{cls.entity} {aggregate_id} not found", field=field)
    return found


def require_enabled_zone(uow: UnitOfWork, zone_id: UUID) -> Zone:
    """Load the zone a command creates something in; it must be Enabled."""
    zone = load_ref(uow, Zone, zone_id, "zone_id")
    zone.require_state(["Enabled"], "create resources in")
    return zone
