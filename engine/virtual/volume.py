"""Volume: a virtual disk on a primary storage pool, attached to at most one VM.

Rules that are not plain source-state checks:

* A root volume attaches as device 0, a data volume as device 1 or higher.
* Detaching a root volume is refused with Validation (field "kind"): being the
  root disk is a fixed property of the volume, not a lifecycle state. The only
  exception is a VM being expunged, whose handler passes vm_expunging=True so
  the root disk can be destroyed with it.
* A failed resize leaves the volume in Error but keeps its attachment, since the
  disk is still wired to the VM; it must be detached before it is destroyed.
* A revert (requested in Ready or Attached: the orchestration only asks for
  one while the VM is stopped, the disk unused) is a sub-state of that state:
  until reverted() or fail() nothing else may touch the disk. A failed revert
  leaves the volume in Error, keeping its attachment like a failed resize.
* So is a move to another pool (a stopped VM's offline migration, its disk
  on a host's local pool; or the volume's own migration, asked with
  migration_requested, which the effectors copy as work of its own): until
  moved(), move_cancelled() or move_failed() nothing else may touch it, and
  a cancelled or failed move leaves it where it was.

All of these sub-state refusals raise InvalidTransition like plain state ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.vm import require_reason

VolumeState = Literal[
    "Allocated", "Creating", "Ready", "Attached", "Resizing", "Destroyed", "Error"
]
VOLUME_STATES: Final[tuple[VolumeState, ...]] = get_args(VolumeState)
VolumeKind = Literal["root", "data"]
ResumeState = Literal["Ready", "Attached"]

# Source states each command accepts; the sub-state rules above narrow them.
VOLUME_TRANSITIONS: Final[Mapping[str, tuple[VolumeState, ...]]] = MappingProxyType(
    {
        "create_requested": ("Allocated",),
        "created": ("Creating",),
        "attach": ("Ready",),
        "detach": ("Attached", "Error"),  # Error only while still attached
        "resize_requested": ("Ready", "Attached"),
        "resized": ("Resizing",),
        "revert_requested": ("Ready", "Attached"),
        "reverted": ("Ready", "Attached"),  # only while a revert is pending
        "destroy": ("Allocated", "Ready", "Error"),  # Error only once detached
        # Ready and Attached only while reverting.
        "fail": ("Creating", "Resizing", "Ready", "Attached"),
        "move_requested": ("Ready", "Attached"),
        "moved": ("Ready", "Attached"),  # only while a move is pending
        "move_cancelled": ("Ready", "Attached"),  # likewise
        "migration_requested": ("Ready", "Attached"),
        "move_failed": ("Ready", "Attached"),  # only while a move is pending
    }
)

# While a revert is pending only these may run; while a move is, those.
_DURING_REVERT: Final = frozenset({"reverted", "fail"})
_DURING_MOVE: Final = frozenset({"moved", "move_cancelled", "move_failed"})


class Volume(Aggregate):
    entity = "volume"

    # What the hypervisor last showed that differed from the record (None:
    # nothing reported); volumes pickled before it have none.
    drift: str | None = None

    @event("Created")
    def __init__(
        self,
        account: str,
        name: str,
        zone_id: UUID,
        size_bytes: int,
        kind: VolumeKind,
        template_id: UUID | None,
    ) -> None:
        self.account = account
        self.name = name
        self.zone_id = zone_id
        self.size_bytes = size_bytes
        self.kind: VolumeKind = kind
        self.template_id = template_id
        self.state: VolumeState = "Allocated"
        self.pool_id: UUID | None = None
        self.host_id: UUID | None = None
        self.vm_id: UUID | None = None
        self.device_id: int | None = None
        self.resize_to: int | None = None
        self.resume_state: ResumeState | None = None
        self.reverting_to: UUID | None = None
        # The size the pending revert brings back (the snapshot's), if known.
        self.reverting_size: int | None = None
        # A pending move: the pool and the host it goes to.
        self.moving_to: UUID | None = None
        self.moving_host_id: UUID | None = None
        self.last_error: str | None = None

    @classmethod
    def create(
        cls,
        account: str,
        name: str,
        zone_id: UUID,
        size_bytes: int,
        kind: VolumeKind,
        template_id: UUID | None = None,
        *,
        id: UUID | None = None,  # the library's keyword
    ) -> Volume:
        require_name(account, "account")
        require_name(name)
        require(size_bytes > 0, "size_bytes must be positive", field="size_bytes")
        require(kind in get_args(VolumeKind), "kind must be root or data", field="kind")
        # cls(...) would refuse id=, see VirtualMachine.create.
        volume: Volume = cls._create(
            cls.Created,
            id=id,
            account=account,
            name=name,
            zone_id=zone_id,
            size_bytes=size_bytes,
            kind=kind,
            template_id=template_id,
        )
        return volume

    @property
    def attached(self) -> bool:
        return self.vm_id is not None

    def _require(self, action: str) -> None:
        self.require_state(VOLUME_TRANSITIONS[action], action)
        if self.reverting_to is not None and action not in _DURING_REVERT:
            raise self._refuse(action)
        # Volumes recorded before moves have no such attribute.
        moving = getattr(self, "moving_to", None) is not None
        if moving != (action in _DURING_MOVE):
            raise self._refuse(action)

    def _refuse(self, action: str) -> InvalidTransition:
        return InvalidTransition(f"{self.entity} {self.id}", self.state, action, owner=self.id)

    def require_snapshot_source(self) -> None:
        """Refuse a snapshot unless the disk is settled (not being created, resized
        or reverted); emits nothing, the Snapshot aggregate records the snapshot."""
        self.require_state(("Ready", "Attached"), "snapshot")
        if self.reverting_to is not None or getattr(self, "moving_to", None) is not None:
            raise self._refuse("snapshot")

    def create_requested(self, pool_id: UUID, host_id: UUID | None = None) -> None:
        """host_id names the host that creates it (a local pool's host, the
        VM's); without one the effector picks an enabled host of the zone."""
        self._require("create_requested")
        self._creation_requested(pool_id, host_id)

    def created(self) -> None:
        self._require("created")
        self._creation_completed()

    def attach(self, vm_id: UUID, device_id: int) -> None:
        self._require("attach")
        if self.kind == "root":
            require(device_id == 0, "a root volume attaches as device 0", field="device_id")
        else:
            require(device_id >= 1, "a data volume attaches as device 1 or up", field="device_id")
        self._attached(vm_id, device_id)

    def detach(self, *, vm_expunging: bool = False) -> None:
        self._require("detach")
        if self.vm_id is None:
            raise self._refuse("detach")
        if self.kind == "root" and not vm_expunging:
            raise Validation("a root volume cannot be detached from its vm", field="kind")
        self._detached(self.vm_id)

    def resize_requested(self, new_size_bytes: int) -> None:
        self._require("resize_requested")
        require(
            new_size_bytes > self.size_bytes,
            f"volumes only grow: {new_size_bytes} is not above {self.size_bytes}",
            field="new_size_bytes",
        )
        self._resize_requested(new_size_bytes)

    def resized(self) -> None:
        self._require("resized")
        if self.resize_to is None:  # unreachable: Resizing always has a target
            raise self._refuse("resized")
        self._resized(self.resize_to)

    def revert_requested(self, snapshot_id: UUID, size_bytes: int | None = None) -> None:
        """size_bytes: the volume's size when the snapshot was taken, which
        applying the snapshot restores (None for snapshots recorded before
        snapshots kept it: the size is left as it is)."""
        self._require("revert_requested")
        if size_bytes is not None:
            require(size_bytes >= 1, "size_bytes must be at least 1", field="size_bytes")
        self._revert_requested(snapshot_id, size_bytes)

    def reverted(self) -> None:
        self._require("reverted")
        if self.reverting_to is None:
            raise self._refuse("reverted")
        self._reverted(self.reverting_to)

    def move_requested(self, pool_id: UUID, host_id: UUID) -> None:
        """Its file is to be copied to pool_id (reached from host_id)."""
        self._require("move_requested")
        if pool_id == self.pool_id:
            raise Validation(f"volume {self.id} is on pool {pool_id} already", field="pool_id")
        self._move_requested(pool_id, host_id)

    def migration_requested(self, pool_id: UUID, host_id: UUID | None) -> None:
        """Its file is to be copied to pool_id by an effector (work of its
        own, volume.move), reached from host_id (None: any host of the pool)."""
        self._require("migration_requested")
        if pool_id == self.pool_id:
            raise Validation(f"volume {self.id} is on pool {pool_id} already", field="pool_id")
        self._migration_requested(pool_id, host_id)

    def move_failed(self, reason: str) -> None:
        """The effector could not copy it: it stays where it was."""
        self._require("move_failed")
        require_reason(reason)
        self._move_failed(reason)

    def moved(self) -> None:
        """The copy is in the new pool (and gone from the old one)."""
        self._require("moved")
        self._moved()

    def move_cancelled(self) -> None:
        """The move did not happen: it stays where it was."""
        self._require("move_cancelled")
        self._move_cancelled()

    def destroy(self) -> None:
        self._require("destroy")
        if self.attached:
            raise self._refuse("destroy")
        self._destroyed()

    def observe_drift(self, observed: str, expected: str) -> None:
        """The hypervisor shows the volume missing or of another size (a
        fact, allowed in every state; nothing is changed: an operator
        decides)."""
        require(bool(observed.strip()), "observed must not be empty", field="observed")
        self._drift_observed(observed=observed, expected=expected)

    @event("DriftObserved")
    def _drift_observed(self, observed: str, expected: str) -> None:
        self.drift = f"the hypervisor shows {observed}; the engine recorded {expected}"

    def fail(self, reason: str) -> None:
        self._require("fail")
        if self.state in ("Ready", "Attached") and self.reverting_to is None:
            raise self._refuse("fail")
        require_reason(reason)
        self._failed(reason)

    @event("CreationRequested")
    def _creation_requested(self, pool_id: UUID, host_id: UUID | None = None) -> None:
        self.state = "Creating"
        self.pool_id = pool_id
        self.host_id = host_id

    @event("CreationCompleted")
    def _creation_completed(self) -> None:
        self.state = "Ready"

    @event("Attached")
    def _attached(self, vm_id: UUID, device_id: int) -> None:
        self.state = "Attached"
        self.vm_id = vm_id
        self.device_id = device_id

    @event("Detached")
    def _detached(self, vm_id: UUID) -> None:
        if self.state == "Attached":
            self.state = "Ready"
        self.vm_id = None
        self.device_id = None

    @event("ResizeRequested")
    def _resize_requested(self, new_size_bytes: int) -> None:
        self.resume_state = "Attached" if self.state == "Attached" else "Ready"
        self.state = "Resizing"
        self.resize_to = new_size_bytes

    @event("Resized")
    def _resized(self, size_bytes: int) -> None:
        self.state = self.resume_state or "Ready"
        self.size_bytes = size_bytes
        self.resize_to = None
        self.resume_state = None

    class RevertRequested(Aggregate.Event):
        snapshot_id: UUID
        # Added later, optional (same version): absent in older records.
        size_bytes: int | None = None

    @event(RevertRequested)
    def _revert_requested(self, snapshot_id: UUID, size_bytes: int | None) -> None:
        self.reverting_to = snapshot_id
        self.reverting_size = size_bytes

    @event("Reverted")
    def _reverted(self, snapshot_id: UUID) -> None:
        if self.reverting_size is not None:
            self.size_bytes = self.reverting_size
        self.reverting_to = None
        self.reverting_size = None

    @event("MoveRequested")
    def _move_requested(self, pool_id: UUID, host_id: UUID) -> None:
        self.moving_to = pool_id
        self.moving_host_id = host_id

    @event("MigrationRequested")
    def _migration_requested(self, pool_id: UUID, host_id: UUID | None) -> None:
        self.moving_to = pool_id
        self.moving_host_id = host_id

    @event("MoveFailed")
    def _move_failed(self, reason: str) -> None:
        self.moving_to = None
        self.moving_host_id = None
        self.last_error = reason

    @event("Moved")
    def _moved(self) -> None:
        self.pool_id = self.moving_to
        self.host_id = self.moving_host_id
        self.moving_to = None
        self.moving_host_id = None

    @event("MoveCancelled")
    def _move_cancelled(self) -> None:
        self.moving_to = None
        self.moving_host_id = None

    @event("Destroyed")
    def _destroyed(self) -> None:
        self.state = "Destroyed"

    @event("Failed")
    def _failed(self, reason: str) -> None:
        self.state = "Error"
        self.last_error = reason
        self.resize_to = None
        self.resume_state = None
        self.reverting_to = None
        self.reverting_size = None
