"""The handlers of the fabric aggregates' Enable<X> and Disable<X> commands.

Seven aggregates share the Enabled/Disabled lifecycle
(engine/fabric/lifecycle.Switchable), and their fourteen commands did the
same thing by hand: load the aggregate the command's one field names, call
enable() or disable(), answer with its id. The commands themselves stay one
class each: their names and field names (zone_id, pool_id, ...) are the
published contract.
"""

from __future__ import annotations

import re
from uuid import UUID

from cloud_engine.engine.commands.base import Command, Handler, Outcome, handles
from cloud_engine.engine.fabric.lifecycle import Switchable
from cloud_engine.engine.unit_of_work import UnitOfWork


def _id_field(command_type: type[Command]) -> str:
    fields = command_type.__struct_fields__
    if len(fields) != 1:
        raise TypeError(f"{command_type.__name__} must name only the aggregate, not {fields}")
    return fields[0]


def _handler(command_type: type[Command], aggregate: type[Switchable], enable: bool) -> Handler:
    field = _id_field(command_type)

    def handle(uow: UnitOfWork, cmd: Command) -> Outcome:
        aggregate_id: UUID = getattr(cmd, field)
        target = uow.get(aggregate, aggregate_id)
        if enable:
            target.enable()
        else:
            target.disable()
        return Outcome(aggregate_id=aggregate_id)

    # As the hand-written handler was called (enable_storage_pool), for tracebacks.
    handle.__name__ = handle.__qualname__ = re.sub(
        r"(?<!^)(?=[A-Z])", "_", command_type.__name__
    ).lower()
    return handles(command_type)(handle)


def handles_switch(
    enable: type[Command], disable: type[Command], aggregate: type[Switchable]
) -> tuple[Handler, Handler]:
    """Register the handlers of an aggregate's Enable and Disable commands
    (each with one field, the aggregate's id); returns them, enable first."""
    return _handler(enable, aggregate, True), _handler(disable, aggregate, False)
