"""Snapshot: a point-in-time copy of one volume.

An internal snapshot lives inside the volume's qcow2 image; an external one is
a separate file that can be backed up to secondary storage, so only external
snapshots reach BackedUp. Reverting is a command on the volume
(Volume.revert_requested), not on the snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.virtual.vm import require_reason

SnapshotState = Literal["Creating", "Ready", "BackedUp", "Error", "Destroyed"]
SNAPSHOT_STATES: Final[tuple[SnapshotState, ...]] = get_args(SnapshotState)
SnapshotKind = Literal["internal", "external"]

# States a volume can be reverted to this snapshot from.
REVERTIBLE: Final[tuple[SnapshotState, ...]] = ("Ready", "BackedUp")

SNAPSHOT_TRANSITIONS: Final[Mapping[str, tuple[SnapshotState, ...]]] = MappingProxyType(
    {
        "created": ("Creating",),
        "backed_up": ("Ready",),
        "fail": ("Creating",),
        "destroy": ("Ready", "BackedUp", "Error"),
    }
)


class Snapshot(Aggregate):
    entity = "snapshot"

    class Created(Aggregate.Created):
        volume_id: UUID
        name: str
        kind: SnapshotKind
        # Added later, optional (same version): absent in older records.
        size_bytes: int | None = None

    @event(Created)
    def __init__(
        self, volume_id: UUID, name: str, kind: SnapshotKind, size_bytes: int | None = None
    ) -> None:
        self.volume_id = volume_id
        self.name = name
        self.kind: SnapshotKind = kind
        # The volume's size when taken: reverting to it brings that size back.
        self.size_bytes = size_bytes
        self.state: SnapshotState = "Creating"
        self.last_error: str | None = None

    @classmethod
    def create(
        cls,
        volume_id: UUID,
        name: str,
        kind: SnapshotKind = "internal",
        *,
        size_bytes: int | None = None,
        id: UUID | None = None,  # the library's keyword
    ) -> Snapshot:
        require_name(name)
        require(kind in get_args(SnapshotKind), "kind must be internal or external", field="kind")
        if size_bytes is not None:
            require(size_bytes >= 1, "size_bytes must be at least 1", field="size_bytes")
        # cls(...) would refuse id=, see VirtualMachine.create.
        snapshot: Snapshot = cls._create(
            cls.Created, id=id, volume_id=volume_id, name=name, kind=kind, size_bytes=size_bytes
        )
        return snapshot

    def _require(self, action: str) -> None:
        self.require_state(SNAPSHOT_TRANSITIONS[action], action)

    def created(self) -> None:
        self._require("created")
        self._creation_completed()

    def backed_up(self) -> None:
        self._require("backed_up")
        require(
            self.kind == "external",
            "internal snapshots live inside the volume and cannot be backed up",
            field="kind",
        )
        self._backed_up()

    def fail(self, reason: str) -> None:
        self._require("fail")
        require_reason(reason)
        self._failed(reason)

    def destroy(self) -> None:
        self._require("destroy")
        self._destroyed()

    @event("CreationCompleted")
    def _creation_completed(self) -> None:
        self.state = "Ready"

    @event("BackedUp")
    def _backed_up(self) -> None:
        self.state = "BackedUp"

    @event("Failed")
    def _failed(self, reason: str) -> None:
        self.state = "Error"
        self.last_error = reason

    @event("Destroyed")
    def _destroyed(self) -> None:
        self.state = "Destroyed"
