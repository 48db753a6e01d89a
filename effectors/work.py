"""Work items: which events in the log ask an effector to act.

Work is never sent to an effector directly: the engine records a request
as an event (a VM's start requested on a chosen host, a volume's creation
requested on a pool), the relay publishes it, and the effector serving that
zone picks it up from Kafka. A work item's operation id is derived from the
event (aggregate id and version), so a redelivered event is the same
operation and its result is recorded once.
"""

from __future__ import annotations

import uuid
from typing import Literal
from uuid import UUID

import msgspec

from bus.cloudevents import CloudEvent

WorkKind = Literal[
    "vm.start",
    "vm.stop",
    "vm.reboot",
    "vm.destroy",
    "vm.expunge",
    "vm.migrate",
    "volume.create",
    "volume.resize",
    "volume.delete",
    "volume.revert",
    "snapshot.create",
    "template.download",
]

# (aggregate, event name) -> the work it asks for.
WORK_EVENTS: dict[tuple[str, str], WorkKind] = {
    ("vm", "start_requested"): "vm.start",
    ("vm", "stop_requested"): "vm.stop",
    ("vm", "rebooted"): "vm.reboot",
    ("vm", "destroyed"): "vm.destroy",
    ("vm", "expunge_requested"): "vm.expunge",
    ("vm", "migration_requested"): "vm.migrate",
    ("volume", "creation_requested"): "volume.create",
    ("volume", "resize_requested"): "volume.resize",
    ("volume", "destroyed"): "volume.delete",
    ("volume", "revert_requested"): "volume.revert",
    ("snapshot", "created"): "snapshot.create",
    ("template", "download_requested"): "template.download",
}

_OPERATIONS = UUID("6f1d3c52-8b1e-4f5e-9a57-0c6d1f2b7e11")


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    operation_id: UUID
    kind: WorkKind
    aggregate_id: UUID
    version: int  # the requesting event's aggregate version
    position: int  # its global position in the log
    correlation_id: str = ""
    forced: bool = False  # vm.stop


class _StopData(msgspec.Struct):
    forced: bool = False


def operation_id(aggregate_id: UUID, version: int) -> UUID:
    return uuid.uuid5(_OPERATIONS, f"{aggregate_id}:{version}")


def work_for(event: CloudEvent) -> WorkItem | None:
    """The work an event asks for, or None if it asks for none."""
    parts = event.type.split(".")  # io.cloudengine.<aggregate>.<event>.v<N>
    if len(parts) != 5:
        return None
    kind = WORK_EVENTS.get((parts[2], parts[3]))
    if kind is None:
        return None
    forced = False
    if kind == "vm.stop":
        forced = msgspec.json.decode(event.data or b"{}", type=_StopData).forced
    return WorkItem(
        operation_id=operation_id(event.aggregate_id, event.aggregate_version),
        kind=kind,
        aggregate_id=event.aggregate_id,
        version=event.aggregate_version,
        position=event.position,
        correlation_id=event.correlation_id,
        forced=forced,
    )
