"""Idempotent libvirt domain operations for one host.

Every operation observes the domain first and acts only if the goal is not
already met, so a reconciler can call it again after a crash, a lost reply or
a retry: the repeat returns Outcome(changed=False) with the same final state.
changed=False means "this call did not have to act"; when a concurrent actor
(or an earlier attempt whose reply was lost) got there first, libvirt's
"already running" / "not running" refusal is turned into changed=False after
re-observing that the goal holds. Any other libvirt error surfaces as
HypervisorError carrying libvirt's code and message.

The domain UUID is the VM id: lookups are by UUID only, never by name.

Operations whose goal is "not running" (stop, destroy, undefine) are met by an
absent domain; start and reboot need the domain and raise DomainMissing.

Guests may have no OS (the tests boot firmware only), so ACPI requests can be
ignored: stop() waits up to timeout_s and then destroys; reboot() falls back
to reset() (see its docstring for why that fallback is time-based).

migrate(): one managed live migration (migrate3 with both connections,
LIVE|PERSIST_DEST|UNDEFINE_SOURCE, plus UNSAFE when asked). Storage is
shared (the same disk path on both hosts): no NON_SHARED_DISK copy is
requested. Against qemu:///system, a second connection to the same libvirtd
is refused by libvirt (HypervisorError) and the domain keeps running; with
libvirt's test driver the decision path is tested (already on the
destination: changed=False; absent on both: DomainMissing; not running:
DomainNotRunning); between lab hosts (each its own libvirtd) it moves a
running QEMU guest. What a migration cut short leaves, and how the effector
finds where the guest runs, is in compute/migration.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import libvirt
import msgspec
import structlog

from cloud_engine.effectors.compute.domain_xml import (
    cdrom_of,
    devices_of,
    disk_xml,
    domain_xml,
    size_of,
)
from cloud_engine.effectors.compute.spec import (
    DiskSpec,
    DomainSpec,
    DomainState,
    Outcome,
    PowerState,
    absent_domain,
)
from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError

log = structlog.get_logger("effectors.compute")

_POWER_STATES: dict[int, PowerState] = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    # Blocked on a resource (I/O, a host CPU) is still running for a scheduler.
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    # Being shut down: still consuming the host until it reaches shutoff.
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}

# States in which no QEMU process exists for the domain.
_INACTIVE: frozenset[PowerState] = frozenset({"absent", "shutoff"})

_UNDEFINE_BASIC_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
)
_UNDEFINE_FLAGS = (
    _UNDEFINE_BASIC_FLAGS
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)
# A driver without checkpoints or NVRAM (the test driver) refuses those flags
# as unsupported rather than ignoring them; it has no such metadata to remove.
_UNSUPPORTED_FLAGS = frozenset({libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT})

# libvirt's answer when the domain is already in (or just left) the state asked for.
_RACE_CODES = frozenset({libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN})


class DomainMissing(Exception):
    """The operation needs a defined domain and the host has none with this UUID."""

    def __init__(self, uuid: UUID) -> None:
        super().__init__(f"no domain with uuid {uuid}")
        self.uuid = uuid


class NoCdromDrive(Exception):
    """The running domain has no CD-ROM drive there to change the media of
    (defined before VMs had one: its next start gives it one)."""

    def __init__(self, uuid: UUID, target: str) -> None:
        super().__init__(
            f"domain {uuid} has no CD-ROM drive {target}: stop and start the VM to add one"
        )


class DomainNotRunning(Exception):
    """The operation needs a running domain."""

    def __init__(self, uuid: UUID, state: PowerState) -> None:
        super().__init__(f"domain {uuid} is {state}, not running")
        self.uuid = uuid
        self.state = state


def _read(uuid: UUID, dom: Any) -> DomainState:
    code, _reason = dom.state()
    return DomainState(
        uuid=uuid, exists=True, state=_POWER_STATES.get(code, "other"), name=dom.name()
    )


class ComputeDriver:
    def __init__(self, hypervisor: Hypervisor, *, poll_interval_s: float = 0.1) -> None:
        self.hypervisor = hypervisor
        self.poll_interval_s = poll_interval_s

    # -- observing -------------------------------------------------------------

    def observe(self, uuid: UUID) -> DomainState:
        def fn(conn: Any) -> DomainState:
            try:
                return _read(uuid, conn.lookupByUUIDString(str(uuid)))
            except libvirt.libvirtError as e:
                # Also covers the domain vanishing between lookup and state().
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return absent_domain(uuid)
                raise

        return self.hypervisor.call("observe", fn)

    def list_domains(self) -> list[DomainState]:
        def fn(conn: Any) -> list[DomainState]:
            found = []
            for dom in conn.listAllDomains(0):
                try:
                    found.append(_read(UUID(dom.UUIDString()), dom))
                except libvirt.libvirtError as e:
                    # Undefined while we were listing: not on the host any more.
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return found

        return self.hypervisor.call("list_domains", fn)

    # -- acting ----------------------------------------------------------------

    def define(self, spec: DomainSpec) -> Outcome:
        """Define the domain unless one with spec.uuid exists with the spec's
        vCPUs, RAM, disks and interfaces. A stopped domain whose size, disks
        or interfaces differ (a scale, a volume attached, detached or moved
        since) is redefined; a running one is left as it runs (its new
        definition applies at its next start)."""
        current = self.observe(spec.uuid)
        xml = domain_xml(spec)
        if current.exists and (
            current.state not in _INACTIVE or _same(self._inactive_xml(spec.uuid), xml)
        ):
            return Outcome(changed=False, state=current)
        self.hypervisor.call("define", lambda conn: conn.defineXML(xml))
        log.info("domain_defined", uuid=str(spec.uuid), name=spec.name)
        return Outcome(changed=True, state=self.observe(spec.uuid))

    def _inactive_xml(self, uuid: UUID) -> str:
        return str(
            self.hypervisor.call(
                "describe",
                lambda conn: _lookup(conn, uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
            )
        )

    def start(self, uuid: UUID) -> Outcome:
        """Running afterwards. A paused domain is resumed."""
        current = self._existing(uuid)
        if current.state == "running":
            return Outcome(changed=False, state=current)
        if current.state == "paused":
            return self._act("resume", uuid, lambda d: d.resume(), _is_running)
        return self._act("start", uuid, lambda d: d.create(), _is_running)

    def stop(self, uuid: UUID, *, timeout_s: float = 30.0, force: bool = False) -> Outcome:
        """Shut off afterwards (or absent). Graceful: ACPI shutdown, wait up
        to timeout_s, then destroy. A paused or crashed guest cannot react to
        ACPI, so it is destroyed at once, as with force."""
        current = self.observe(uuid)
        if current.state in _INACTIVE:
            return Outcome(changed=False, state=current)
        if force or current.state != "running":
            return self._power_off(uuid)
        try:
            self.hypervisor.call("shutdown", lambda c: _lookup(c, uuid).shutdown())
        except HypervisorError as e:
            if e.code not in _RACE_CODES:
                raise
        after = self._wait(uuid, timeout_s, lambda s: s.state in _INACTIVE)
        if after.state in _INACTIVE:
            log.info("domain_stopped", uuid=str(uuid), graceful=True)
            return Outcome(changed=True, state=after)
        log.info("domain_stop_timed_out", uuid=str(uuid), timeout_s=timeout_s)
        return self._power_off(uuid, changed_if_race=True)

    def reboot(self, uuid: UUID, *, timeout_s: float = 5.0) -> Outcome:
        """Reboot a running domain; always acts (changed=True).

        reboot() only delivers an ACPI request and returns; libvirt offers no
        pollable sign that the guest acted on it (the only one is the REBOOT
        domain event, which needs a process-wide libvirt event loop this driver
        does not install). So the fallback is time-based: wait timeout_s, and if
        the domain is still running then, reset() it. A guest that did reboot in
        time is reset once more early in its boot; a guest that left running
        (powered off instead, or destroyed by someone) is not touched.
        """
        current = self._existing(uuid)
        if current.state != "running":
            raise DomainNotRunning(uuid, current.state)
        self.hypervisor.call("reboot", lambda c: _lookup(c, uuid).reboot(0))
        after = self._wait(uuid, timeout_s, lambda s: s.state != "running")
        if after.state == "running":
            self.hypervisor.call("reset", lambda c: _lookup(c, uuid).reset(0))
            after = self.observe(uuid)
            log.info("domain_reset", uuid=str(uuid), reason="reboot_ignored")
        else:
            log.info("domain_reboot_left_running", uuid=str(uuid), state=after.state)
        return Outcome(changed=True, state=after)

    def change_media(self, uuid: UUID, cdrom: DiskSpec) -> Outcome:
        """A running domain's CD-ROM drive holds cdrom.path afterwards (None:
        empty), in the running guest and in its definition (libvirt's
        update-device, forced: a guest that locked the tray is overridden,
        as CloudStack does). A domain that is not running is left alone:
        its next start defines it with the drive as the engine records it."""
        current = self.observe(uuid)
        if current.state != "running":
            return Outcome(changed=False, state=current)
        live = str(self.hypervisor.call("describe", lambda c: _lookup(c, uuid).XMLDesc(0)))
        drive = cdrom_of(live, cdrom.target)
        if drive is None:
            raise NoCdromDrive(uuid, cdrom.target)
        if drive.media == cdrom.path:
            return Outcome(changed=False, state=current)
        # A running guest's boot order cannot change (libvirt refuses): the
        # drive keeps its own, and the next start defines the new one.
        xml = disk_xml(msgspec.structs.replace(cdrom, boot_order=drive.boot_order))
        flags = (
            libvirt.VIR_DOMAIN_AFFECT_LIVE
            | libvirt.VIR_DOMAIN_AFFECT_CONFIG
            | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
        )
        self.hypervisor.call(
            "update_device", lambda c: _lookup(c, uuid).updateDeviceFlags(xml, flags)
        )
        log.info("domain_media_changed", uuid=str(uuid), target=cdrom.target, media=cdrom.path)
        return Outcome(changed=True, state=self.observe(uuid))

    def destroy(self, uuid: UUID) -> Outcome:
        """Power off at once, keeping the definition."""
        current = self.observe(uuid)
        if current.state in _INACTIVE:
            return Outcome(changed=False, state=current)
        return self._power_off(uuid)

    def undefine(self, uuid: UUID) -> Outcome:
        """Absent afterwards: powered off if needed, then undefined together
        with its snapshot, checkpoint, managed-save and NVRAM metadata."""
        current = self.observe(uuid)
        if not current.exists:
            return Outcome(changed=False, state=current)
        powered_off = current.state not in _INACTIVE and self._power_off(uuid).changed
        try:
            outcome = self._act(
                "undefine", uuid, lambda d: d.undefineFlags(_UNDEFINE_FLAGS), _is_absent
            )
        except HypervisorError as e:
            if e.code not in _UNSUPPORTED_FLAGS:
                raise
            outcome = self._act(
                "undefine", uuid, lambda d: d.undefineFlags(_UNDEFINE_BASIC_FLAGS), _is_absent
            )
        return Outcome(changed=outcome.changed or powered_off, state=outcome.state)

    def migrate(
        self,
        uuid: UUID,
        destination: Hypervisor,
        *,
        live: bool = True,
        migration_uri: str | None = None,
        unsafe: bool = False,
    ) -> Outcome:
        """Move the running domain to destination (persistently; the source
        definition is removed). Storage must be shared. migration_uri overrides
        where the QEMU stream goes (e.g. tcp://10.0.0.2), when the destination's
        hostname does not resolve to the right address. unsafe: the caller
        knows the disks are on storage both hosts share coherently, which
        libvirt cannot tell of a plain directory (it knows NFS, GFS2, Ceph
        and the like) and refuses as "unsafe" otherwise. The state returned
        is the destination's."""
        there = ComputeDriver(destination, poll_interval_s=self.poll_interval_s)
        target = there.observe(uuid)
        here = self.observe(uuid)
        if target.state == "running" and here.state in _INACTIVE:
            return Outcome(changed=False, state=target)
        if not here.exists:
            raise DomainMissing(uuid)
        if here.state != "running":
            raise DomainNotRunning(uuid, here.state)

        flags = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if live:
            flags |= libvirt.VIR_MIGRATE_LIVE
        if unsafe:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        params: dict[str, Any] = {}
        if migration_uri is not None:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri

        def fn(conn: Any) -> None:
            _lookup(conn, uuid).migrate3(destination.conn, params, flags)

        try:
            self.hypervisor.call("migrate", fn)
        except HypervisorError as e:
            # A retried attempt may find the first one already done.
            if e.code not in _RACE_CODES:
                raise
            target = there.observe(uuid)
            if not (target.state == "running" and self.observe(uuid).state in _INACTIVE):
                raise
            return Outcome(changed=False, state=target)
        log.info("domain_migrated", uuid=str(uuid), to=destination.uri, live=live)
        return Outcome(changed=True, state=there.observe(uuid))

    # -- helpers ---------------------------------------------------------------

    def _existing(self, uuid: UUID) -> DomainState:
        current = self.observe(uuid)
        if not current.exists:
            raise DomainMissing(uuid)
        return current

    def _power_off(self, uuid: UUID, *, changed_if_race: bool = False) -> Outcome:
        outcome = self._act("destroy", uuid, lambda d: d.destroy(), _is_inactive)
        log.info("domain_destroyed", uuid=str(uuid))
        # After a graceful request the guest may have shut down just before
        # destroy(): this call still changed the domain.
        return Outcome(changed=outcome.changed or changed_if_race, state=outcome.state)

    def _act(
        self,
        action: str,
        uuid: UUID,
        op: Callable[[Any], object],
        goal: Callable[[DomainState], bool],
    ) -> Outcome:
        try:
            self.hypervisor.call(action, lambda c: op(_lookup(c, uuid)))
        except HypervisorError as e:
            # libvirt refuses what is already done ("domain is already running",
            # "not running", "no domain"): if the goal holds, someone else -- or
            # an earlier attempt whose reply was lost -- did it.
            if e.code not in _RACE_CODES:
                raise
            after = self.observe(uuid)
            if not goal(after):
                if not after.exists:
                    raise DomainMissing(uuid) from e
                raise
            return Outcome(changed=False, state=after)
        return Outcome(changed=True, state=self.observe(uuid))

    def _wait(
        self, uuid: UUID, timeout_s: float, done: Callable[[DomainState], bool]
    ) -> DomainState:
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.observe(uuid)
            if done(current) or time.monotonic() >= deadline:
                return current
            time.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))


def _lookup(conn: Any, uuid: UUID) -> Any:
    return conn.lookupByUUIDString(str(uuid))


def _is_running(state: DomainState) -> bool:
    return state.state == "running"


def _is_inactive(state: DomainState) -> bool:
    return state.state in _INACTIVE


def _is_absent(state: DomainState) -> bool:
    return not state.exists


def _same(defined: str, wanted: str) -> bool:
    """What the engine decides of a domain is what libvirt has defined."""
    return size_of(defined) == size_of(wanted) and devices_of(defined) == devices_of(wanted)
