"""Response bodies of the public contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec

from cloud_engine.projections.history import HistoryEntry

JsonObject = Annotated[
    msgspec.Raw,
    msgspec.Meta(
        extra_json_schema={
            "type": "object",
            "description": "The resource's public state: its attributes and derived values"
            " (a host's free capacity, an operation's steps).",
        }
    ),
]


class CommandAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to every command (202 Accepted).

    The command is recorded in the event log. operation_id names the
    Operation it started (VM deploy and lifecycle), to poll at
    /v1/operations/{operation_id}; it is null for commands that are complete
    once recorded (fabric administration, creating a network, ...).
    resource_id is the resource the command created or acted on.
    """

    operation_id: UUID | None
    resource_id: UUID
    resource_type: str
    # What the command handed out, when it did: an IP address, a NIC's MAC.
    value: str | int | None = None
    # Global position of the command's last event in the log.
    position: int | None = None
    # True when an Idempotency-Key returned the first answer again.
    replayed: bool = False


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    type: str
    version: int
    # Global position of the last event reflected (null: read from the log
    # before the read model caught up).
    position: int | None
    state: str | None
    name: str | None
    account: str | None
    zone_id: UUID | None
    created_on: datetime
    modified_on: datetime
    attributes: JsonObject


class ResourcePage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Resource]
    # Pass as ?cursor= for the next page; null on the last page.
    next_cursor: str | None


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    """Events of one resource, oldest first, with who caused it and why; when
    there are more, next_after_version is the after_version of the next page."""

    items: list[HistoryEntry]
    next_after_version: int | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    detail: str = ""
