"""Drift rules: the engine's view of a host against what libvirt runs.

Pure functions, so the rules are tested without a hypervisor; the
reconciler feeds them and publishes what they find.
"""

from __future__ import annotations

import uuid
from typing import Literal
from uuid import UUID

import msgspec

from cloud_engine.effectors.compute.spec import DomainState
from cloud_engine.effectors.desired import VmView, VolumeView

DriftKind = Literal["drift.vm_state", "drift.unknown_domain", "drift.volume"]

DRIFT_IDS = UUID("0b6c3f0e-5d2a-4b7e-8f61-3a9d2c4e7b15")

# Engine states in which the VM's domain must run / must not run. The others
# (Starting, Stopping, Migrating, Expunging) have work in flight whose
# outcome the effector reports itself; Error waits for an operator.
_MUST_RUN = frozenset({"Running"})
_MUST_NOT_RUN = frozenset({"Allocated", "Stopped", "Destroyed"})
# A paused guest serves nothing either: for a Running VM it is drift too.
_NOT_RUNNING = frozenset({"absent", "shutoff", "crashed", "paused"})

VOLUME_JUDGED = frozenset({"Ready", "Attached"})
# What the engine records of a VM whose start or stop timed out.
UNSETTLED = "Error (unsettled)"


class Drift(msgspec.Struct, frozen=True, kw_only=True):
    kind: DriftKind
    aggregate_id: UUID
    observed: str
    expected: str | None = None
    # The VM (or volume) version the drift was judged against; 0 for unknown
    # domains. Part of the operation id, not of the report.
    version: int = 0


def _claims(vm: VmView, host_id: UUID) -> bool:
    """Whether the engine expects the VM's domain on this host. A VM without
    host_id was handed to compare() because its last host is this one (the
    caller's contract); one whose host_id names another host does not claim
    a domain here any more (e.g. migrated away)."""
    if vm.migration_target_id == host_id:
        return True
    if vm.migrating_stopped:
        # Its domain stays defined where its disks are until they moved.
        return vm.last_host_id == host_id
    return vm.host_id is None or vm.host_id == host_id


def compare(host_id: UUID, vms: list[VmView], domains: list[DomainState]) -> list[Drift]:
    """Drift between the VMs the engine associates with a host (host_id, or
    last_host_id while host_id is unset, or migration_target_id equal to it)
    and the domains listed on that host."""
    drifts: list[Drift] = []
    on_host = {d.uuid: d for d in domains if d.exists}
    claimed: set[UUID] = set()
    for vm in vms:
        if not _claims(vm, host_id):
            continue
        claimed.add(vm.id)
        domain = on_host.get(vm.id)
        observed = domain.state if domain is not None else "absent"
        if vm.state in _MUST_RUN and vm.host_id == host_id:
            if observed in _NOT_RUNNING:
                drifts.append(_vm_drift(vm, observed, "running"))
        elif vm.state in _MUST_NOT_RUN:
            # An absent domain is fine: it is defined when the VM starts. A
            # destroyed VM's paused one holds memory its host gave back.
            if observed == "running" or (vm.state == "Destroyed" and observed == "paused"):
                drifts.append(_vm_drift(vm, observed, "shutoff"))
        elif vm.state == "Expunged" and domain is not None:
            # Expunged means the definition was removed; one left behind
            # still holds a name and maybe a running guest.
            drifts.append(_vm_drift(vm, observed, "absent"))
        elif vm.state == "Error" and vm.unsettled and vm.migration_target_id is not None:
            # A live migration that timed out: its work's answer settles it
            # (this effector's, asked again until it can tell). One host's
            # view is no answer: running on the source may be a migration
            # still under way, and a guest settled on the destination from
            # here would leave the source's paused leftover (only the
            # migration's settle removes it).
            pass
        elif vm.state == "Error" and vm.unsettled:
            # A start or stop that timed out: whatever the domain shows is
            # reported, and convergence records it (automation/convergence.py).
            drifts.append(_vm_drift(vm, observed, UNSETTLED))
        # Starting, Stopping, Migrating (the domain is on the source, the
        # target or both), Expunging: work in flight whose outcome the
        # effector reports itself. Other Errors wait for an operator.
    for domain in domains:
        if domain.exists and domain.uuid not in claimed:
            drifts.append(
                Drift(
                    kind="drift.unknown_domain",
                    aggregate_id=domain.uuid,
                    # Every unknown domain is reported; the name tells the
                    # engine (or an operator) whether it looks like ours.
                    observed=f"{domain.state} name={domain.name}",
                )
            )
    return drifts


def _vm_drift(vm: VmView, observed: str, expected: str) -> Drift:
    return Drift(
        kind="drift.vm_state",
        aggregate_id=vm.id,
        observed=observed,
        expected=expected,
        version=vm.version,
    )


def drift_operation_id(host_id: UUID, drift: Drift) -> UUID:
    key = f"{host_id}:{drift.aggregate_id}:{drift.kind}:{drift.observed}:{drift.version}"
    return uuid.uuid5(DRIFT_IDS, key)


def volume_drift(volume: VolumeView, seen: tuple[bool, int]) -> Drift | None:
    exists, capacity = seen
    if not exists:
        observed = "missing"
    elif capacity != volume.size_bytes:
        observed = f"capacity={capacity}"
    else:
        return None
    return Drift(
        kind="drift.volume",
        aggregate_id=volume.id,
        observed=observed,
        expected=f"capacity={volume.size_bytes}",
        version=volume.version,
    )
