"""Host: a KVM hypervisor whose vCPUs and RAM are reserved for virtual machines.

Reservations are recorded on the host itself, so two placements racing for the
last free vCPU conflict on the host's version instead of both succeeding.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition
from cloud_engine.engine.fabric.capacity import (
    Reservation,
    normalise_tags,
    overcommitted,
    require_overcommit,
)
from cloud_engine.engine.fabric.lifecycle import Switchable

# The capacity helpers moved to engine.fabric.capacity; they stay importable
# from here.
__all__ = [
    "Host",
    "HostLiveness",
    "HostState",
    "Reservation",
    "normalise_tags",
    "overcommitted",
    "require_overcommit",
]

# PrepareForMaintenance: being drained (no new placements, its VMs moving
# away); ErrorInMaintenance: some of them cannot move (the reasons in
# maintenance_blockers); both CloudStack's names.
HostState = Literal[
    "Enabled", "Disabled", "PrepareForMaintenance", "ErrorInMaintenance", "Maintenance", "Down"
]
DRAINING: tuple[HostState, ...] = ("PrepareForMaintenance", "ErrorInMaintenance")
# Whether the host is alive, apart from its administrative state: Up,
# Suspect (its libvirt stopped answering the effector; not yet confirmed),
# Down (confirmed by a stale heartbeat on its shared storage). See
# automation/liveness.py.
HostLiveness = Literal["Up", "Suspect", "Down"]

# The libvirt test driver ("test:///default") is accepted so effectors can be
# exercised without a hypervisor.
_LIBVIRT_URI = re.compile(r"^(qemu|test)(\+[a-z0-9]+)?://\S*$")
# A Linux interface name (IFNAMSIZ - 1 characters at most).
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


def require_underlay(address: str | None, device: str | None) -> None:
    """The host's underlay: the address its peers reach it at (live
    migration's stream, VXLAN tunnels) and the device that address is on.
    Both or neither."""
    require(
        (address is None) == (device is None),
        "underlay_address and underlay_device go together",
        field="underlay_address" if address is None else "underlay_device",
    )
    if address is None or device is None:
        return
    try:
        ipaddress.IPv4Address(address)
        valid = True
    except ValueError:
        valid = False
    require(valid, "underlay_address must be an IPv4 address", field="underlay_address")
    require(
        bool(_IFNAME.match(device)) and device not in (".", ".."),
        "underlay_device must be an interface name of 1-15 letters, digits, '_', '.', '-'",
        field="underlay_device",
    )


class Host(Switchable):
    entity = "host"

    # Hosts recorded (and pickled) before liveness was: alive, never fenced.
    liveness: HostLiveness = "Up"
    fenced = False
    liveness_reason: str | None = None
    last_heartbeat_at: datetime | None = None
    answering_since: datetime | None = None
    fenced_at: datetime | None = None

    class Created(Aggregate.Created):
        zone_id: UUID
        pod_id: UUID
        cluster_id: UUID
        name: str
        cpu_cores: int
        cpu_mhz: int | None
        ram_mb: int
        cpu_overcommit: float
        ram_overcommit: float
        tags: tuple[str, ...]
        libvirt_uri: str
        # Added later, optional (same version): absent in older records.
        underlay_address: str | None = None
        underlay_device: str | None = None

    @event(Created)
    def __init__(
        self,
        zone_id: UUID,
        pod_id: UUID,
        cluster_id: UUID,
        name: str,
        cpu_cores: int,
        cpu_mhz: int | None,
        ram_mb: int,
        cpu_overcommit: float,
        ram_overcommit: float,
        tags: tuple[str, ...],
        libvirt_uri: str,
        underlay_address: str | None = None,
        underlay_device: str | None = None,
    ) -> None:
        self.zone_id = zone_id
        self.pod_id = pod_id
        self.cluster_id = cluster_id
        self.name = name
        self.cpu_cores = cpu_cores
        self.cpu_mhz = cpu_mhz
        self.ram_mb = ram_mb
        self.cpu_overcommit = cpu_overcommit
        self.ram_overcommit = ram_overcommit
        self.tags = tags
        self.libvirt_uri = libvirt_uri
        # Where other hosts reach this one (None: not registered): effectors
        # send live migrations to it and tunnel VXLAN networks over it.
        self.underlay_address = underlay_address
        self.underlay_device = underlay_device
        self.state: HostState = "Enabled"
        self._reservations: dict[UUID, Reservation] = {}
        self.liveness: HostLiveness = "Up"
        self.fenced = False
        self.liveness_reason: str | None = None
        self.last_heartbeat_at: datetime | None = None
        self.answering_since: datetime | None = None
        self.fenced_at: datetime | None = None

    @classmethod
    def create(
        cls,
        *,
        zone_id: UUID,
        pod_id: UUID,
        cluster_id: UUID,
        name: str,
        cpu_cores: int,
        ram_mb: int,
        libvirt_uri: str,
        cpu_mhz: int | None = None,
        cpu_overcommit: float = 1.0,
        ram_overcommit: float = 1.0,
        tags: Iterable[str] = (),
        underlay_address: str | None = None,
        underlay_device: str | None = None,
        id: UUID | None = None,
    ) -> Host:
        require_name(name)
        require(cpu_cores >= 1, "cpu_cores must be at least 1", field="cpu_cores")
        require(cpu_mhz is None or cpu_mhz >= 1, "cpu_mhz must be at least 1", field="cpu_mhz")
        require(ram_mb >= 1, "ram_mb must be at least 1", field="ram_mb")
        require_overcommit(cpu_overcommit, "cpu_overcommit")
        require_overcommit(ram_overcommit, "ram_overcommit")
        require(
            bool(_LIBVIRT_URI.match(libvirt_uri)),
            "libvirt_uri must be a qemu URI such as qemu+ssh://host/system",
            field="libvirt_uri",
        )
        require_underlay(underlay_address, underlay_device)
        host: Host = cls._new(
            id=id,
            zone_id=zone_id,
            pod_id=pod_id,
            cluster_id=cluster_id,
            name=name,
            cpu_cores=cpu_cores,
            cpu_mhz=cpu_mhz,
            ram_mb=ram_mb,
            cpu_overcommit=float(cpu_overcommit),
            ram_overcommit=float(ram_overcommit),
            tags=normalise_tags(tags),
            libvirt_uri=libvirt_uri,
            underlay_address=underlay_address,
            underlay_device=underlay_device,
        )
        return host

    # Capacity ----------------------------------------------------------------

    @property
    def reservations(self) -> Mapping[UUID, Reservation]:
        return MappingProxyType(self._reservations)

    @property
    def cpus_used(self) -> int:
        return sum(r.cpus for r in self._reservations.values())

    @property
    def ram_used_mb(self) -> int:
        return sum(r.ram_mb for r in self._reservations.values())

    @property
    def cpus_total(self) -> float:
        return float(overcommitted(self.cpu_cores, self.cpu_overcommit))

    @property
    def ram_total_mb(self) -> int:
        return int(overcommitted(self.ram_mb, self.ram_overcommit))

    @property
    def cpus_free(self) -> float:
        return float(overcommitted(self.cpu_cores, self.cpu_overcommit) - self.cpus_used)

    @property
    def ram_free_mb(self) -> int:
        return self.ram_total_mb - self.ram_used_mb

    def reserve(self, vm_id: UUID, cpus: int, ram_mb: int) -> None:
        require(cpus >= 1, "cpus must be at least 1", field="cpus")
        require(ram_mb >= 1, "ram_mb must be at least 1", field="ram_mb")
        self.require_state(["Enabled"], "reserve capacity on")
        if self.liveness != "Up":
            raise InvalidTransition(
                f"host {self.id}",
                f"{self.state}/{self.liveness}",
                "reserve capacity on",
                owner=self.id,
            )
        if vm_id in self._reservations:
            raise Conflict(f"vm {vm_id} already holds a reservation on host {self.id}")
        if self.cpus_used + cpus > overcommitted(self.cpu_cores, self.cpu_overcommit):
            raise CapacityExceeded(
                f"host {self.id} has {self.cpus_free:g} vCPUs free, {cpus} requested",
                field="cpus",
                owner=self.id,
            )
        if self.ram_used_mb + ram_mb > self.ram_total_mb:
            raise CapacityExceeded(
                f"host {self.id} has {self.ram_free_mb} MiB RAM free, {ram_mb} requested",
                field="ram_mb",
                owner=self.id,
            )
        self._capacity_reserved(vm_id=vm_id, cpus=cpus, ram_mb=ram_mb)

    def release(self, vm_id: UUID) -> None:
        # Allowed in every state: a VM on a host that went down must still be
        # able to give its capacity back.
        if vm_id not in self._reservations:
            raise Conflict(f"vm {vm_id} holds no reservation on host {self.id}")
        self._capacity_released(vm_id=vm_id)

    def update_overcommit(self, cpu_overcommit: float, ram_overcommit: float) -> None:
        require_overcommit(cpu_overcommit, "cpu_overcommit")
        require_overcommit(ram_overcommit, "ram_overcommit")
        if self.cpus_used > overcommitted(self.cpu_cores, cpu_overcommit):
            raise CapacityExceeded(
                f"host {self.id} has {self.cpus_used} vCPUs reserved, more than "
                f"{cpu_overcommit:g} x {self.cpu_cores} cores",
                field="cpu_overcommit",
            )
        if self.ram_used_mb > int(overcommitted(self.ram_mb, ram_overcommit)):
            raise CapacityExceeded(
                f"host {self.id} has {self.ram_used_mb} MiB RAM reserved, more than "
                f"{ram_overcommit:g} x {self.ram_mb} MiB",
                field="ram_overcommit",
            )
        self._overcommit_updated(
            cpu_overcommit=float(cpu_overcommit), ram_overcommit=float(ram_overcommit)
        )

    @event("CapacityReserved")
    def _capacity_reserved(self, vm_id: UUID, cpus: int, ram_mb: int) -> None:
        self._reservations[vm_id] = Reservation(cpus=cpus, ram_mb=ram_mb)

    @event("CapacityReleased")
    def _capacity_released(self, vm_id: UUID) -> None:
        del self._reservations[vm_id]

    @event("OvercommitUpdated")
    def _overcommit_updated(self, cpu_overcommit: float, ram_overcommit: float) -> None:
        self.cpu_overcommit = cpu_overcommit
        self.ram_overcommit = ram_overcommit

    # Lifecycle (enable and disable: Switchable) -------------------------------

    @property
    def maintenance_blockers(self) -> tuple[str, ...]:
        """Why a drain cannot finish: one line per VM that cannot move."""
        # Hosts recorded (and pickled) before drains lack it.
        return tuple(getattr(self, "_blockers", ()))

    def prepare_for_maintenance(self) -> None:
        """A drain begins (host.maintenance): no new placements (capacity is
        reserved on Enabled hosts only) while its VMs move away. From
        ErrorInMaintenance, an admin tries again."""
        self.require_state(["Enabled", "Disabled", "ErrorInMaintenance"], "drain")
        self._maintenance_prepared()

    def maintenance_blocked(self, blockers: tuple[str, ...]) -> None:
        """Some VMs cannot move (each line says which and why): the host
        waits in ErrorInMaintenance until they are dealt with or the admin
        cancels."""
        self.require_state(DRAINING, "block the drain of")
        require(bool(blockers), "blockers must name a VM", field="blockers")
        if self.state != "ErrorInMaintenance" or blockers != self.maintenance_blockers:
            self._maintenance_blocked(blockers=tuple(blockers))

    def enter_maintenance(self) -> None:
        # Straight from Enabled or Disabled (the state flag alone, VMs left
        # where they are), or at the end of a drain.
        self.require_state(["Enabled", "Disabled", *DRAINING], "enter maintenance on")
        self._maintenance_entered()

    def cancel_maintenance(self) -> None:
        """Placeable again; VMs that moved stay where they are."""
        self.require_state([*DRAINING, "Maintenance"], "cancel maintenance on")
        self._maintenance_cancelled()

    def exit_maintenance(self) -> None:
        self.require_state(["Maintenance"], "exit maintenance on")
        self._maintenance_exited()

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

    def declare_down(self) -> None:
        self.require_state(["Enabled", "Disabled", "Maintenance"], "declare down")
        self._declared_down()

    def declare_up(self) -> None:
        self.require_state(["Down"], "declare up")
        self._declared_up()

    @event("MaintenanceEntered")
    def _maintenance_entered(self) -> None:
        self.state = "Maintenance"
        self._blockers = ()

    @event("MaintenanceExited")
    def _maintenance_exited(self) -> None:
        self.state = "Enabled"

    @event("DeclaredDown")
    def _declared_down(self) -> None:
        self.state = "Down"

    @event("DeclaredUp")
    def _declared_up(self) -> None:
        self.state = "Enabled"

    # Liveness (automation/liveness.py decides; these record) ---------------------

    def _require_liveness(self, allowed: tuple[HostLiveness, ...], action: str) -> None:
        if self.liveness not in allowed:
            raise InvalidTransition(f"host {self.id}", self.liveness, action, owner=self.id)

    def suspect(self, reason: str) -> None:
        """Its libvirt stopped answering: no placements until it is judged."""
        require(bool(reason.strip()), "reason must not be empty", field="reason")
        self._require_liveness(("Up",), "suspect")
        self._suspected(reason=reason)

    def confirm_down(self, reason: str, last_heartbeat_at: datetime | None) -> None:
        """The second signal agrees (its heartbeat is stale): Down, to be
        fenced before anything it ran is started elsewhere."""
        require(bool(reason.strip()), "reason must not be empty", field="reason")
        self._require_liveness(("Suspect",), "declare down")
        self._down(reason=reason, last_heartbeat_at=last_heartbeat_at)

    def record_fenced(self, fencer: str) -> None:
        """Powered off (or its hypervisor killed) by the fencer: nothing it
        ran can still write to a disk."""
        require(bool(fencer.strip()), "fencer must not be empty", field="fencer")
        self._require_liveness(("Down",), "record fenced")
        if not self.fenced:
            self._fenced(fencer=fencer, at=datetime.now(UTC))

    def answered(self) -> bool:
        """Its libvirt answers again. A Suspect host is Up at once (it never
        went down); a Down one only notes since when (automation declares it
        up once it has been fenced and healthy long enough). False: nothing
        to record."""
        if self.liveness == "Suspect":
            self._up(reason="its hypervisor answers again")
            return True
        if self.liveness == "Down" and self.answering_since is None:
            self._answered(at=datetime.now(UTC))
            return True
        return False

    def declare_alive(self, reason: str) -> None:
        """Up again: by automation (fenced, then healthy long enough) or by
        an admin (declare-up)."""
        require(bool(reason.strip()), "reason must not be empty", field="reason")
        self._require_liveness(("Suspect", "Down"), "declare up")
        self._up(reason=reason)

    @event("Suspected")
    def _suspected(self, reason: str) -> None:
        self.liveness = "Suspect"
        self.liveness_reason = reason

    @event("Down")
    def _down(self, reason: str, last_heartbeat_at: datetime | None) -> None:
        self.liveness = "Down"
        self.liveness_reason = reason
        self.last_heartbeat_at = last_heartbeat_at
        self.answering_since = None

    @event("Fenced")
    def _fenced(self, fencer: str, at: datetime) -> None:
        self.fenced = True
        self.fenced_at = at
        self.liveness_reason = f"fenced by {fencer}"

    @event("Answered")
    def _answered(self, at: datetime) -> None:
        self.answering_since = at

    @event("Up")
    def _up(self, reason: str) -> None:
        self.liveness = "Up"
        self.liveness_reason = reason
        self.fenced = False
        self.answering_since = None

    def unknown_domain_observed(self, domain_id: UUID, observed: str) -> None:
        """A domain on this host that the engine does not know: reported,
        left alone (it may be an operator's)."""
        require(bool(observed.strip()), "observed must not be empty", field="observed")
        self._unknown_domain_observed(domain_id=domain_id, observed=observed)

    @event("UnknownDomainObserved")
    def _unknown_domain_observed(self, domain_id: UUID, observed: str) -> None:
        pass

    def shared_pool_unavailable(self, pool_id: UUID, observed: str) -> None:
        """A shared pool of the host's cluster or zone that its libvirtd
        could not define or start (the effector's reconciler, once an
        outage): the host writes no heartbeat there and cannot serve that
        pool's disks. Reported for an operator (a missing mount, a pool of
        another name on the same path); nothing else changes."""
        require(bool(observed.strip()), "observed must not be empty", field="observed")
        self._shared_pool_unavailable(pool_id=pool_id, observed=observed)

    @event("SharedPoolUnavailable")
    def _shared_pool_unavailable(self, pool_id: UUID, observed: str) -> None:
        pass
