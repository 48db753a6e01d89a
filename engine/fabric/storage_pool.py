"""StoragePool: primary storage for volumes, shared by a cluster or a whole
zone, or local to one host (scope "host": its disks, which only that host's
VMs reach; such a pool also names the host's cluster).

Like a host, the pool records each volume's reservation itself, so concurrent
placements cannot both take the last free bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Literal, get_args
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.errors import CapacityExceeded, Conflict
from cloud_engine.engine.fabric.capacity import normalise_tags, overcommitted, require_overcommit
from cloud_engine.engine.fabric.lifecycle import Switchable

# PrepareForMaintenance: being drained (nothing new reserved on it, the
# stopped VMs' and detached volumes moving to another pool of its scope);
# ErrorInMaintenance: some cannot move (maintenance_blockers says why).
StoragePoolState = Literal[
    "Enabled", "Disabled", "PrepareForMaintenance", "ErrorInMaintenance", "Maintenance"
]
DRAINING: tuple[StoragePoolState, ...] = ("PrepareForMaintenance", "ErrorInMaintenance")
StorageScope = Literal["cluster", "zone", "host"]


def require_pool_url(url: str) -> None:
    parts = urlsplit(url)
    is_path = url.startswith("/")
    is_url = bool(parts.scheme) and url.startswith(f"{parts.scheme}://")
    file_ok = parts.scheme != "file" or parts.path.startswith("/")
    require(
        (is_path or is_url) and file_ok and not any(c.isspace() for c in url),
        "url must be an absolute path or a URL such as file:///var/lib/cloud-engine/pool1",
        field="url",
    )


class StoragePool(Switchable):
    entity = "storage pool"

    class Created(Aggregate.Created):
        zone_id: UUID
        cluster_id: UUID | None
        name: str
        scope: StorageScope
        capacity_bytes: int
        url: str
        tags: tuple[str, ...]
        overcommit: float
        # Added with scope "host", optional (same version): absent in older records.
        host_id: UUID | None = None

    @event(Created)
    def __init__(
        self,
        zone_id: UUID,
        cluster_id: UUID | None,
        name: str,
        scope: StorageScope,
        capacity_bytes: int,
        url: str,
        tags: tuple[str, ...],
        overcommit: float,
        host_id: UUID | None = None,
    ) -> None:
        self.zone_id = zone_id
        self.cluster_id = cluster_id
        # Scope "host": the only host that reaches it.
        self.host_id = host_id
        self.name = name
        self.scope: StorageScope = scope
        self.capacity_bytes = capacity_bytes
        self.url = url
        self.tags = tags
        self.overcommit = overcommit
        self.state: StoragePoolState = "Enabled"
        self._reservations: dict[UUID, int] = {}

    @classmethod
    def create(
        cls,
        *,
        zone_id: UUID,
        name: str,
        scope: StorageScope,
        capacity_bytes: int,
        url: str,
        cluster_id: UUID | None = None,
        tags: Iterable[str] = (),
        overcommit: float = 1.0,
        host_id: UUID | None = None,
        id: UUID | None = None,
    ) -> StoragePool:
        require_name(name)
        require(
            scope in get_args(StorageScope), "scope must be cluster, zone or host", field="scope"
        )
        if scope == "host":
            require(host_id is not None, "a host-scoped pool needs a host_id", field="host_id")
        else:
            require(host_id is None, f"a {scope}-scoped pool takes no host_id", field="host_id")
        if scope in ("cluster", "host"):
            needs = cluster_id is not None
            require(needs, f"a {scope}-scoped pool needs a cluster_id", field="cluster_id")
        else:
            forbidden = cluster_id is not None
            require(not forbidden, "a zone-scoped pool takes no cluster_id", field="cluster_id")
        require(capacity_bytes >= 1, "capacity_bytes must be at least 1", field="capacity_bytes")
        require_pool_url(url)
        require_overcommit(overcommit, "overcommit")
        pool: StoragePool = cls._new(
            id=id,
            zone_id=zone_id,
            cluster_id=cluster_id,
            name=name,
            scope=scope,
            capacity_bytes=capacity_bytes,
            url=url,
            tags=normalise_tags(tags),
            overcommit=float(overcommit),
            host_id=host_id,
        )
        return pool

    # Capacity ----------------------------------------------------------------

    @property
    def reservations(self) -> Mapping[UUID, int]:
        """Reserved bytes by volume id."""
        return MappingProxyType(self._reservations)

    @property
    def used_bytes(self) -> int:
        return sum(self._reservations.values())

    @property
    def total_bytes(self) -> int:
        return int(overcommitted(self.capacity_bytes, self.overcommit))

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes

    def reserve(self, volume_id: UUID, size_bytes: int) -> None:
        require(size_bytes >= 1, "size_bytes must be at least 1", field="size_bytes")
        self.require_state(["Enabled"], "reserve storage on")
        if volume_id in self._reservations:
            raise Conflict(f"volume {volume_id} already holds a reservation on pool {self.id}")
        if self.used_bytes + size_bytes > self.total_bytes:
            raise CapacityExceeded(
                f"storage pool {self.id} has {self.free_bytes} bytes free, {size_bytes} requested",
                field="size_bytes",
                owner=self.id,
            )
        self._storage_reserved(volume_id=volume_id, size_bytes=size_bytes)

    def release(self, volume_id: UUID) -> None:
        # Allowed in every state, so volumes can be deleted from a pool that is
        # disabled or in maintenance.
        if volume_id not in self._reservations:
            raise Conflict(f"volume {volume_id} holds no reservation on pool {self.id}")
        self._storage_released(volume_id=volume_id)

    def resize_reservation(self, volume_id: UUID, size_bytes: int) -> None:
        """A volume grew (or its growth is given back): its reservation follows.
        Allowed in every state like release, since the space is already held."""
        held = self._reservations.get(volume_id)
        if held is None:
            raise Conflict(f"volume {volume_id} holds no reservation on pool {self.id}")
        require(size_bytes >= 1, "size_bytes must be at least 1", field="size_bytes")
        if size_bytes == held:
            return
        if size_bytes > held and self.used_bytes - held + size_bytes > self.total_bytes:
            raise CapacityExceeded(
                f"storage pool {self.id} has {self.free_bytes} bytes free,"
                f" {size_bytes - held} more requested",
                field="size_bytes",
            )
        self._reservation_resized(volume_id=volume_id, size_bytes=size_bytes)

    @event("ReservationResized")
    def _reservation_resized(self, volume_id: UUID, size_bytes: int) -> None:
        self._reservations = {**self._reservations, volume_id: size_bytes}

    @event("StorageReserved")
    def _storage_reserved(self, volume_id: UUID, size_bytes: int) -> None:
        self._reservations[volume_id] = size_bytes

    @event("StorageReleased")
    def _storage_released(self, volume_id: UUID) -> None:
        del self._reservations[volume_id]

    # Lifecycle (enable and disable: Switchable) -------------------------------

    @property
    def maintenance_blockers(self) -> tuple[str, ...]:
        """Why a drain cannot finish: one line per volume that cannot move."""
        # Pools recorded (and pickled) before drains lack it.
        return tuple(getattr(self, "_blockers", ()))

    def prepare_for_maintenance(self) -> None:
        """A drain begins (storage_pool.maintenance): nothing new is
        reserved on it (reservations need Enabled) while its volumes move."""
        self.require_state(["Enabled", "Disabled", "ErrorInMaintenance"], "drain")
        self._maintenance_prepared()

    def maintenance_blocked(self, blockers: tuple[str, ...]) -> None:
        self.require_state(DRAINING, "block the drain of")
        require(bool(blockers), "blockers must name a volume", field="blockers")
        if self.state != "ErrorInMaintenance" or blockers != self.maintenance_blockers:
            self._maintenance_blocked(blockers=tuple(blockers))

    def cancel_maintenance(self) -> None:
        """Usable again; volumes that moved stay where they are."""
        self.require_state([*DRAINING, "Maintenance"], "cancel maintenance on")
        self._maintenance_cancelled()

    def enter_maintenance(self) -> None:
        # Straight from Enabled or Disabled (the flag alone), or at the end
        # of a drain.
        self.require_state(["Enabled", "Disabled", *DRAINING], "enter maintenance on")
        self._maintenance_entered()

    @event("MaintenancePrepared")
    def _maintenance_prepared(self) -> None:
        self.state = "PrepareForMaintenance"
        self._blockers: tuple[str, ...] = ()

    @event("MaintenanceBlocked")
    def _maintenance_blocked(self, blockers: tuple[str, ...]) -> None:
        self.state = "ErrorInMaintenance"
        self._blockers = blockers

    @event("MaintenanceCancelled")
    def _maintenance_cancelled(self) -> None:
        self.state = "Enabled"
        self._blockers = ()

    def exit_maintenance(self) -> None:
        self.require_state(["Maintenance"], "exit maintenance on")
        self._maintenance_exited()

    @event("MaintenanceEntered")
    def _maintenance_entered(self) -> None:
        self.state = "Maintenance"
        self._blockers = ()

    @event("MaintenanceExited")
    def _maintenance_exited(self) -> None:
        self.state = "Enabled"
