"""Typed commands and their handlers; importing this package registers them all."""

from engine.commands import compute, fabric, network, network_tags, storage  # noqa: F401
from engine.commands.base import (
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
