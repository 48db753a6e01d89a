"""Typed commands and their handlers; importing this package registers them all."""

from cloud_engine.engine.commands import (  # noqa: F401
    accounts,
    compute,
    fabric,
    ha,
    liveness,
    maintenance,
    network,
    network_tags,
    operations,
    storage,
)
from cloud_engine.engine.commands.base import (
    HANDLERS,
    AggregateVersion,
    Command,
    CommandContext,
    CommandResult,
    Outcome,
    dispatch,
    handles,
)

__all__ = [
    "HANDLERS",
    "AggregateVersion",
    "Command",
    "CommandContext",
    "CommandResult",
    "Outcome",
    "dispatch",
    "handles",
]
