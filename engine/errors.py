"""Typed domain errors.

A command that does not fit an aggregate's state raises one of these before any
event is emitted, so a refused command never half-applies. The API maps them to
HTTP statuses (Validation 422, NotFound 404, the others 409).
"""

from __future__ import annotations

from uuid import UUID


class DomainError(Exception):
    """Base class: a command was refused; nothing was recorded.

    owner is the aggregate that refused, where the refusal names one (a
    host's or pool's capacity, an aggregate's state): the engine tells a
    plan made on stale rows from a refusal about something else by it."""

    code = "domain-error"

    def __init__(
        self, message: str, *, field: str | None = None, owner: UUID | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.owner = owner

    def __str__(self) -> str:
        return self.message


class InvalidTransition(DomainError):
    """The aggregate's current state does not allow this command."""

    code = "invalid-transition"

    def __init__(self, entity: str, state: str, action: str, *, owner: UUID | None = None) -> None:
        super().__init__(f"cannot {action} {entity} in state {state}", owner=owner)
        self.entity = entity
        self.state = state
        self.action = action


class CapacityExceeded(DomainError):
    """A reservation or allocation would exceed what the owner can give."""

    code = "capacity-exceeded"


class QuotaExceeded(DomainError):
    """The command would take an account past a limit an administrator set;
    field names the limit (vms, vcpus, ram_mb, volume_gb, public_ips)."""

    code = "quota-exceeded"


class PlacementRefused(DomainError):
    """The chosen host breaks a placement rule (an affinity group's) that
    another placement made true meanwhile; the engine plans again."""

    code = "placement-refused"


class NotFound(DomainError):
    """The named aggregate does not exist (or is of another type)."""

    code = "not-found"


class Conflict(DomainError):
    """Concurrent change or idempotency-key reuse with a different command."""

    code = "conflict"


class Validation(DomainError):
    """A value is malformed or out of range."""

    code = "validation"
