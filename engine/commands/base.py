"""Typed commands, their results and the handler registry.

A command is a frozen msgspec Struct; its handler is a plain function
(UnitOfWork, command) -> Outcome registered with @handles. Handlers load
aggregates, call command methods (which validate before emitting), and add new
aggregates; the command service persists whatever events they produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import msgspec

from cloud_engine.engine.unit_of_work import UnitOfWork


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base class of every command. The class name is the command's type."""

    # In the public contract (a JSON Schema in schemas/commands/) unless the
    # command sets it False: nothing but the engine's own tests and
    # benchmarks sends it, so no integrator should build on it
    # (schemas/README.md lists them and why). Not a field: never encoded.
    published: ClassVar[bool] = True


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a handler tells its caller: the main aggregate and an optional value
    (an allocated IP address, a VLAN/VXLAN tag)."""

    aggregate_id: UUID
    value: str | int | None = None


class AggregateVersion(msgspec.Struct, frozen=True):
    id: UUID
    type: str
    version: int


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """The result of an executed command.

    position is the global position (notification id) of the last event the
    command stored; read models can be waited on until they reach it.
    replayed is true when an idempotency key returned an earlier result.
    """

    command: str
    aggregate_id: UUID
    value: str | int | None = None
    versions: tuple[AggregateVersion, ...] = ()
    position: int | None = None
    replayed: bool = False


class CommandContext(msgspec.Struct, frozen=True, kw_only=True):
    """Who sends the command and why; becomes each event's EventMeta."""

    actor: str = "system"
    request_id: str = ""
    correlation_id: str = ""
    causation_id: str = ""
    idempotency_key: str | None = None
    # What the idempotency key stands for when the caller built the command
    # from a request plus defaults it looked up (which may differ on a retry):
    # the request's digest. None: the command's own.
    request_digest: bytes | None = None


C = TypeVar("C", bound=Command)
Handler = Callable[[UnitOfWork, Any], Outcome]

HANDLERS: dict[type[Command], Handler] = {}


def handles(command_type: type[C]) -> Callable[[Callable[[UnitOfWork, C], Outcome]], Handler]:
    def register(func: Callable[[UnitOfWork, C], Outcome]) -> Handler:
        if command_type in HANDLERS:
            raise RuntimeError(f"two handlers for {command_type.__name__}")
        HANDLERS[command_type] = func
        return func

    return register


def handler_for(command: Command) -> Handler:
    try:
        return HANDLERS[type(command)]
    except KeyError:
        raise TypeError(f"no handler registered for {type(command).__name__}") from None


def dispatch(uow: UnitOfWork, command: Command) -> Outcome:
    from cloud_engine.engine import quotas  # (quotas imports the aggregates; they import this)

    outcome = handler_for(command)(uow, command)
    # In the same transaction: what the command's resources hold against
    # their accounts' limits; past one, QuotaExceeded and nothing is stored.
    quotas.settle(uow)
    return outcome
