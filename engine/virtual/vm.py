"""VirtualMachine: a tenant VM and its CloudStack-style power lifecycle.

host_id is set exactly while the VM holds a host: once placed (still Allocated)
and in Starting, Running, Stopping and Migrating. Every way out of those states
moves it to last_host_id, so capacity accounting can rely on host_id alone.

A stopped VM migrates too (offline: its disks on a host's local pool are
copied to the destination's): while it does, it holds the destination
(host_id), and it ends Stopped again, with the destination as its
last_host_id, or, if the move failed, where it was.

Error has no direct reset. The way out is destroy() and then recover() (to
Stopped) or expunge_requested(): bringing a broken VM back is an explicit,
audited two-step operator decision rather than a silent state flip. One
Error is not a broken VM but an unknown outcome: a start or stop whose step
timed out (timed_out(), unsettled). That one converges to what the
hypervisor shows (converge(), from automation's convergence), so no VM
stays in a transitional state past its deadline. A live migration that
timed out is unsettled too, between two hosts: it keeps its
migration_target_id, and the effector's late answer (migration_completed
or migration_failed, which say where the guest runs) or the destination
seen running settles it.

Refusals that depend on the lifecycle, including the sub-states "placed" and
"unplaced" of Allocated, raise InvalidTransition; malformed values raise
Validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Final, Literal, get_args
from uuid import UUID

import msgspec
from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.errors import Conflict, InvalidTransition, Validation
from cloud_engine.engine.virtual.guest_data import decode_user_data, require_ssh_keys

VmState = Literal[
    "Allocated",
    "Starting",
    "Running",
    "Stopping",
    "Stopped",
    "Migrating",
    "Destroyed",
    "Expunging",
    "Expunged",
    "Error",
]
VM_STATES: Final[tuple[VmState, ...]] = get_args(VmState)

# Source states each command accepts. place additionally needs an unplaced VM
# and start_requested from Allocated a placed one.
VM_TRANSITIONS: Final[Mapping[str, tuple[VmState, ...]]] = MappingProxyType(
    {
        "place": ("Allocated",),
        "start_requested": ("Allocated", "Stopped"),
        "mark_running": ("Starting",),
        "stop_requested": ("Running",),
        "mark_stopped": ("Stopping",),
        "reboot": ("Running",),
        "migrate_requested": ("Running", "Stopped"),
        "migration_completed": ("Migrating",),
        "migration_failed": ("Migrating",),
        "destroy": ("Allocated", "Stopped", "Running", "Error"),
        "recover": ("Destroyed",),
        "expunge_requested": ("Destroyed",),
        "expunged": ("Expunging",),
        "expunge_failed": ("Expunging",),
        "fail": ("Allocated", "Starting", "Stopping", "Migrating"),
        "timed_out": ("Starting", "Stopping", "Migrating"),
    }
)


class VmSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The compute offering a VM was deployed with.

    The Meta constraints guard decoding (API input); VirtualMachine.create checks
    the same limits again because constructing a Struct does not.
    """

    cpus: Annotated[int, msgspec.Meta(ge=1)]
    ram_mb: Annotated[int, msgspec.Meta(ge=64)]
    root_disk_gb: Annotated[int, msgspec.Meta(ge=1)]
    tags: tuple[str, ...] = ()


def validate_spec(spec: VmSpec) -> None:
    require(spec.cpus >= 1, "cpus must be at least 1", field="spec.cpus")
    require(spec.ram_mb >= 64, "ram_mb must be at least 64", field="spec.ram_mb")
    require(spec.root_disk_gb >= 1, "root_disk_gb must be at least 1", field="spec.root_disk_gb")
    for tag in spec.tags:
        require_name(tag, "spec.tags")


def require_reason(reason: str) -> None:
    require(bool(reason.strip()), "reason must not be empty", field="reason")
    require("\x00" not in reason, "reason must not contain NUL characters", field="reason")


# virtio disks are vda..vdz: device 0 is the root disk.
MAX_DEVICE = 25


class VirtualMachine(Aggregate):
    entity = "vm"

    # VMs recorded (and pickled) before HA was: not HA-enabled.
    ha = False
    ha_priority = 0
    converged_reason: str | None = None
    # VMs recorded (and pickled) before ISOs: no CD-ROM media.
    iso_id: UUID | None = None
    media_pending = False
    media_error: str | None = None
    _media_before: UUID | None = None

    class Created(Aggregate.Created):
        account: str
        name: str
        zone_id: UUID
        template_id: UUID
        spec: VmSpec
        network_ids: tuple[UUID, ...]
        affinity_group: str | None
        # Added later, optional (same version): absent in older records,
        # which must still decode (the library's own Created class would
        # make every field required).
        user_data: str | None = None
        ssh_keys: tuple[str, ...] = ()
        iso_id: UUID | None = None  # deployed from this (bootable) ISO

    @event(Created)
    def __init__(
        self,
        account: str,
        name: str,
        zone_id: UUID,
        template_id: UUID,
        spec: VmSpec,
        network_ids: tuple[UUID, ...],
        affinity_group: str | None,
        user_data: str | None = None,
        ssh_keys: tuple[str, ...] = (),
        iso_id: UUID | None = None,
    ) -> None:
        self.account = account
        self.name = name
        self.zone_id = zone_id
        self.template_id = template_id
        self.spec = spec
        self.network_ids = network_ids
        self.affinity_group = affinity_group
        # The guest's first-boot data (guest_data.py), for the effector's
        # NoCloud seed. In the read model, shown to the VM's owner and to
        # admins only (as the VM is); never in a log line.
        self.user_data = user_data
        self.ssh_keys = tuple(ssh_keys)
        self.state: VmState = "Allocated"
        self.host_id: UUID | None = None
        self.pool_id: UUID | None = None
        self.last_host_id: UUID | None = None
        self.migration_target_id: UUID | None = None
        # The migration in progress is of a stopped VM (it ends Stopped).
        self.migrating_stopped = False
        self.forced_stop = False
        self.last_error: str | None = None
        self.reboot_pending = False
        self.reboot_error: str | None = None
        # Why the last expunge could not remove the domain (None once asked again).
        self.expunge_error: str | None = None
        self._disks: dict[int, UUID] = {}  # attached volumes by device number
        # Restarted elsewhere when its host dies, or when found stopped
        # (automation/ha.py), highest priority first.
        self.ha = False
        self.ha_priority = 0
        # Why the record last followed the hypervisor (automation/convergence.py).
        self.converged_reason: str | None = None
        # The ISO template in its CD-ROM drive (None: empty). A running
        # VM's media change waits for the effector (media_pending); if it
        # fails, the drive keeps what it had (_media_before).
        self.iso_id = iso_id
        self.media_pending = False
        self.media_error: str | None = None
        self._media_before: UUID | None = None
        # In Error because a start or stop got no answer in time: what the
        # hypervisor did is unknown, so the record follows what it shows next
        # (convergence) instead of waiting for an operator.
        self.unsettled = False

    @classmethod
    def create(
        cls,
        account: str,
        name: str,
        zone_id: UUID,
        template_id: UUID,
        spec: VmSpec,
        network_ids: tuple[UUID, ...] = (),
        affinity_group: str | None = None,
        *,
        id: UUID | None = None,  # the library's keyword
        user_data: str | None = None,
        ssh_keys: tuple[str, ...] = (),
        iso_id: UUID | None = None,
    ) -> VirtualMachine:
        require_name(account, "account")
        require_name(name)
        validate_spec(spec)
        require(
            len(set(network_ids)) == len(network_ids),
            "network_ids must not repeat",
            field="network_ids",
        )
        if affinity_group is not None:
            require_name(affinity_group, "affinity_group")
        if user_data is not None:
            decode_user_data(user_data)
        require_ssh_keys(tuple(ssh_keys))
        # Calling cls(...) would refuse id=: the metaclass only forwards it when
        # __init__ names it, so go through _create with the Created event.
        vm: VirtualMachine = cls._create(
            cls.Created,
            id=id,
            account=account,
            name=name,
            zone_id=zone_id,
            template_id=template_id,
            spec=spec,
            network_ids=tuple(network_ids),
            affinity_group=affinity_group,
            user_data=user_data,
            ssh_keys=tuple(ssh_keys),
            iso_id=iso_id,
        )
        return vm

    def is_placed(self) -> bool:
        """Allocated with a host chosen (the sub-state start needs). A method,
        not a property: public properties are part of the resource's view,
        where "placed": false beside "state": "Running" read as a contradiction."""
        return self.state == "Allocated" and self.host_id is not None

    @property
    def disks(self) -> Mapping[int, UUID]:
        """The volumes attached to it, by device number (0 is the root disk)."""
        return MappingProxyType(dict(self._disks))

    def free_device(self) -> int:
        """The lowest data device number not in use."""
        for device in range(1, MAX_DEVICE + 1):
            if device not in self._disks:
                return device
        raise Validation(
            f"vm {self.id} has no free disk device (at most {MAX_DEVICE} data volumes)",
            field="vm_id",
        )

    def disk_attached(self, volume_id: UUID, device: int) -> None:
        """Record a volume attached as device (the Volume records it too)."""
        holder = self._disks.get(device)
        if holder == volume_id:
            return
        if holder is not None:
            raise Validation(
                f"device {device} of vm {self.id} holds volume {holder}", field="device_id"
            )
        self._disk_attached(volume_id, device)

    def scale(self, cpus: int, ram_mb: int) -> None:
        """Its vCPUs and RAM changed (a stopped VM: QEMU fixes them at
        start); the next start defines the domain with them."""
        self.require_state(["Stopped"], "scale")
        spec = msgspec.structs.replace(self.spec, cpus=cpus, ram_mb=ram_mb)
        validate_spec(spec)
        if spec == self.spec:
            raise Validation(
                f"vm {self.id} has {cpus} vCPUs and {ram_mb} MiB already", field="cpus"
            )
        self._scaled(cpus=cpus, ram_mb=ram_mb)

    def root_pool_moved(self, pool_id: UUID) -> None:
        """Its root disk is in another pool now (an offline migration)."""
        self.require_state(["Stopped"], "move the root disk of")
        if pool_id != self.pool_id:
            self._root_pool_moved(pool_id)

    def disk_detached(self, volume_id: UUID) -> None:
        if volume_id in self._disks.values():
            self._disk_detached(volume_id)

    def attach_iso(self, template_id: UUID) -> None:
        """An ISO inserted in its CD-ROM drive: at once in a stopped VM's
        record (its next start defines the domain with it); a running
        VM's drive is changed by the effector (media_pending until then)."""
        self.require_state(["Stopped", "Running"], "attach an ISO to")
        if self.iso_id == template_id:
            raise Validation(f"vm {self.id} has ISO {template_id} attached", field="iso_id")
        if self.iso_id is not None:
            raise Conflict(
                f"vm {self.id} has ISO {self.iso_id} attached: detach it first", field="iso_id"
            )
        self._iso_attached(template_id=template_id, live=self.state == "Running")

    def detach_iso(self) -> None:
        """Its CD-ROM drive emptied (the drive stays, for the next ISO)."""
        self.require_state(["Stopped", "Running"], "detach an ISO from")
        if self.iso_id is None:
            raise Conflict(f"vm {self.id} has no ISO attached", field="vm_id")
        self._iso_detached(live=self.state == "Running")

    def media_changed(self) -> None:
        """The effector changed the running domain's CD-ROM as asked."""
        if self.media_pending:
            self._media_changed()

    def media_change_failed(self, reason: str) -> None:
        """The effector could not: the drive keeps what it had."""
        require_reason(reason)
        if self.media_pending:
            self._media_change_failed(reason=reason, iso_id=self._media_before)

    def _require(self, action: str) -> None:
        self.require_state(VM_TRANSITIONS[action], action)

    def _refuse(self, action: str) -> InvalidTransition:
        return InvalidTransition(f"{self.entity} {self.id}", self.state, action, owner=self.id)

    def place(self, host_id: UUID, pool_id: UUID) -> None:
        self._require("place")
        if self.is_placed():
            raise self._refuse("place")
        self._placed(host_id, pool_id)

    def start_requested(self, host_id: UUID) -> None:
        self._require("start_requested")
        if self.state == "Allocated":
            if not self.is_placed():
                raise self._refuse("start_requested")
            if host_id != self.host_id:
                raise Validation(
                    f"vm {self.id} was placed on host {self.host_id}, not {host_id}",
                    field="host_id",
                )
        self._start_requested(host_id)

    def mark_running(self) -> None:
        self._require("mark_running")
        self._started()

    def stop_requested(self, forced: bool = False) -> None:
        self._require("stop_requested")
        self._stop_requested(forced)

    def mark_stopped(self) -> None:
        self._require("mark_stopped")
        self._stopped()

    def reboot(self) -> None:
        self._require("reboot")
        self._rebooted()

    def reboot_completed(self) -> None:
        """The hypervisor rebooted it (recorded from the effector's result)."""
        if self.reboot_pending:
            self._reboot_completed()

    def reboot_failed(self, reason: str) -> None:
        require_reason(reason)
        if self.reboot_pending:
            self._reboot_failed(reason)

    def migrate_requested(self, target_host_id: UUID) -> None:
        self._require("migrate_requested")
        if target_host_id == (self.host_id if self.state == "Running" else self.last_host_id):
            raise Validation(
                f"vm {self.id} already runs on host {target_host_id}", field="target_host_id"
            )
        self._migration_requested(target_host_id)

    def migration_completed(self) -> None:
        if self.is_unsettled_migration():
            # The effector's answer came after the step's deadline: it
            # observed the guest on the destination before answering.
            assert self.migration_target_id is not None
            self._migration_completed(self.migration_target_id)
            return
        self._require("migration_completed")
        if self.migration_target_id is None:  # unreachable: Migrating always has one
            raise self._refuse("migration_completed")
        self._migration_completed(self.migration_target_id)

    def migration_failed(self, reason: str) -> None:
        if not self.is_unsettled_migration():
            self._require("migration_failed")
        require_reason(reason)
        self._migration_failed(reason)

    def destroy(self) -> None:
        self._require("destroy")
        if self.is_unsettled_migration():
            # Its guest may run on the destination: a destroy would stop the
            # source's domain only and free neither host rightly.
            raise Conflict(
                f"vm {self.id}: its live migration timed out and where its guest runs is"
                " not known yet; the effector's answer settles it, then it can be destroyed",
                field="vm_id",
            )
        self._destroyed()

    def recover(self) -> None:
        self._require("recover")
        self._recovered()

    def expunge_requested(self) -> None:
        self._require("expunge_requested")
        self._expunge_requested()

    def expunged(self) -> None:
        self._require("expunged")
        self._expunged()

    def expunge_failed(self, reason: str) -> None:
        """The hypervisor could not remove the domain: back to Destroyed,
        where expunge can be asked again (or the VM recovered)."""
        self._require("expunge_failed")
        require_reason(reason)
        self._expunge_failed(reason)

    def fail(self, reason: str) -> None:
        self._require("fail")
        require_reason(reason)
        self._failed(reason)

    def timed_out(self, reason: str) -> None:
        """A start, stop or live migration got no answer within its
        deadline: Error, but unsettled (the domain may run or not, and a
        migrating one on either host; convergence or the effector's late
        answer records what the hypervisor shows). The capacity stays
        reserved, on both hosts of a migration, until it does."""
        self._require("timed_out")
        if self.state == "Migrating" and self._stopped_migration():
            # Its disks are being copied: migration_failed puts it back.
            raise self._refuse("timed_out")
        require_reason(reason)
        self._timed_out(reason)

    def observe_drift(self, observed: str, expected: str) -> None:
        """Record that the hypervisor runs something else than the engine
        recorded (allowed in every state: drift is a fact, not a request).
        The state is left alone: what to do about it is for HA to decide."""
        require(bool(observed.strip()), "observed must not be empty", field="observed")
        require(bool(expected.strip()), "expected must not be empty", field="expected")
        self._drift_observed(observed=observed, expected=expected)

    def request_domain_stop(self, reason: str) -> None:
        """Its domain was found still there after the log said it went (a
        destroy's or expunge's work failed or was lost): the effector is
        asked again to power it off, and to undefine it too if the VM is
        Expunged. The state stays; the request and its reason are in the
        VM's history (automation/convergence.py asks)."""
        require_reason(reason)
        if self.state not in ("Destroyed", "Expunged"):
            raise self._refuse("request the domain stopped of")
        self._domain_stop_requested(reason=reason)

    def set_ha(self, enabled: bool, priority: int) -> None:
        require(0 <= priority <= 1000, "ha_priority must be 0-1000", field="ha_priority")
        if self.state in ("Expunging", "Expunged"):
            raise self._refuse("set ha on")
        if (enabled, priority) != (self.ha, self.ha_priority):
            self._ha_updated(enabled=enabled, priority=priority)

    def converge(
        self, to: Literal["Stopped", "Running"], reason: str, host_id: UUID | None = None
    ) -> None:
        """The record follows what the hypervisor shows (the hypervisor is
        the authority on what runs): a Running VM whose domain is gone or
        shut off is Stopped; a Stopped one whose domain runs on host_id is
        Running there. Capacity is the caller's (automation's command
        handler) to give back or reserve in the same transaction."""
        require_reason(reason)
        if to == "Stopped":
            if self.state != "Running" and not (self.state == "Error" and self.is_unsettled()):
                raise self._refuse("converge to Stopped")
            self._power_converged(state="Stopped", reason=reason, host_id=None)
            return
        if self.state not in ("Stopped", "Error") or host_id is None:
            raise self._refuse("converge to Running")
        if self.state == "Error" and not self.is_unsettled():
            raise self._refuse("converge to Running")
        self._power_converged(state="Running", reason=reason, host_id=host_id)

    def is_unsettled(self) -> bool:
        # VMs recorded (and pickled) before timed-out steps were unsettled lack it.
        return self.state == "Error" and bool(getattr(self, "unsettled", False))

    def is_unsettled_migration(self) -> bool:
        """A live migration that timed out: the guest runs on its last host
        (the source) or on migration_target_id, both still reserved."""
        return self.is_unsettled() and self.migration_target_id is not None

    def _release_host(self) -> None:
        # A stopped VM that was migrating held its destination, not the
        # host its disks are on: that one stays its last host.
        if self.host_id is not None and not self._stopped_migration():
            self.last_host_id = self.host_id
        self.host_id = None
        self.migration_target_id = None
        self.migrating_stopped = False

    def _stopped_migration(self) -> bool:
        # VMs recorded (and pickled) before offline migrations lack it.
        return bool(getattr(self, "migrating_stopped", False))

    @event("Placed")
    def _placed(self, host_id: UUID, pool_id: UUID) -> None:
        self.host_id = host_id
        self.pool_id = pool_id

    @event("StartRequested")
    def _start_requested(self, host_id: UUID) -> None:
        self.state = "Starting"
        self.host_id = host_id
        self.forced_stop = False

    @event("Started")
    def _started(self) -> None:
        self.state = "Running"

    @event("StopRequested")
    def _stop_requested(self, forced: bool) -> None:
        self.state = "Stopping"
        self.forced_stop = forced

    @event("Stopped")
    def _stopped(self) -> None:
        self.state = "Stopped"
        self._release_host()

    @event("Rebooted")
    def _rebooted(self) -> None:
        self.state = "Running"
        self.reboot_pending = True
        self.reboot_error = None

    @event("RebootCompleted")
    def _reboot_completed(self) -> None:
        self.reboot_pending = False

    @event("RebootFailed")
    def _reboot_failed(self, reason: str) -> None:
        self.reboot_pending = False
        self.reboot_error = reason
        self.last_error = reason

    @event("MigrationRequested")
    def _migration_requested(self, target_host_id: UUID) -> None:
        # Which kind of migration follows from the state it was asked in.
        self.migrating_stopped = self.state == "Stopped"
        if self.migrating_stopped:
            self.host_id = target_host_id
        self.state = "Migrating"
        self.migration_target_id = target_host_id

    @event("MigrationCompleted")
    def _migration_completed(self, host_id: UUID) -> None:
        if self._stopped_migration():
            self.state = "Stopped"
            self.last_host_id = host_id
            self.host_id = None
        else:
            self.state = "Running"
            if self.host_id is not None:  # None: settled after a timeout
                self.last_host_id = self.host_id
            self.host_id = host_id
        self.migration_target_id = None
        self.migrating_stopped = False
        self.unsettled = False

    @event("MigrationFailed")
    def _migration_failed(self, reason: str) -> None:
        if self._stopped_migration():
            self.state = "Stopped"
            self.host_id = None  # it stays on its last host
        else:
            self.state = "Running"
            if self.host_id is None:  # settled after a timeout: the source
                self.host_id = self.last_host_id
        self.migration_target_id = None
        self.migrating_stopped = False
        self.unsettled = False
        self.last_error = reason

    @event("Destroyed")
    def _destroyed(self) -> None:
        self.state = "Destroyed"
        self._release_host()

    @event("Recovered")
    def _recovered(self) -> None:
        self.state = "Stopped"

    @event("ExpungeRequested")
    def _expunge_requested(self) -> None:
        self.state = "Expunging"
        self.expunge_error = None

    @event("Expunged")
    def _expunged(self) -> None:
        self.state = "Expunged"

    @event("ExpungeFailed")
    def _expunge_failed(self, reason: str) -> None:
        self.state = "Destroyed"
        self.expunge_error = reason
        self.last_error = reason

    @event("DriftObserved")
    def _drift_observed(self, observed: str, expected: str) -> None:
        self.last_error = f"the hypervisor shows {observed}; the engine recorded {expected}"

    @event("DomainStopRequested")
    def _domain_stop_requested(self, reason: str) -> None:
        self.last_error = reason

    @event("Scaled")
    def _scaled(self, cpus: int, ram_mb: int) -> None:
        self.spec = msgspec.structs.replace(self.spec, cpus=cpus, ram_mb=ram_mb)

    @event("HaUpdated")
    def _ha_updated(self, enabled: bool, priority: int) -> None:
        self.ha = enabled
        self.ha_priority = priority

    @event("PowerStateConverged")
    def _power_converged(self, state: str, reason: str, host_id: UUID | None) -> None:
        self.converged_reason = reason
        self.last_error = reason
        self.unsettled = False
        if state == "Stopped":
            self.state = "Stopped"
            self.reboot_pending = False
            self._release_host()
        else:
            self.state = "Running"
            self.host_id = host_id
            self.migration_target_id = None  # an unsettled migration's

    @event("RootPoolMoved")
    def _root_pool_moved(self, pool_id: UUID) -> None:
        self.pool_id = pool_id

    @event("DiskAttached")
    def _disk_attached(self, volume_id: UUID, device: int) -> None:
        self._disks = {**self._disks, device: volume_id}

    @event("DiskDetached")
    def _disk_detached(self, volume_id: UUID) -> None:
        self._disks = {d: v for d, v in self._disks.items() if v != volume_id}

    @event("IsoAttached")
    def _iso_attached(self, template_id: UUID, live: bool) -> None:
        self._media_before = self.iso_id
        self.iso_id = template_id
        self.media_pending = live
        self.media_error = None

    @event("IsoDetached")
    def _iso_detached(self, live: bool) -> None:
        self._media_before = self.iso_id
        self.iso_id = None
        self.media_pending = live
        self.media_error = None

    @event("MediaChanged")
    def _media_changed(self) -> None:
        self.media_pending = False

    @event("MediaChangeFailed")
    def _media_change_failed(self, reason: str, iso_id: UUID | None) -> None:
        self.media_pending = False
        self.media_error = reason
        self.iso_id = iso_id

    @event("Failed")
    def _failed(self, reason: str) -> None:
        self.state = "Error"
        self.last_error = reason
        self._release_host()

    @event("TimedOut")
    def _timed_out(self, reason: str) -> None:
        # A live migration's destination stays: the guest may run there.
        target = self.migration_target_id
        self.state = "Error"
        self.last_error = reason
        self.unsettled = True
        self._release_host()
        self.migration_target_id = target
