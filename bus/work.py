"""Work kinds: which events in the log ask an effector to act, and what the
engine records when it has acted. The one table of them (KINDS).

Work is never sent to an effector directly: the engine records a request
as an event (a VM's start requested on a chosen host, a volume's creation
requested on a pool), the relay publishes it, and the effector serving that
zone picks it up from Kafka. It answers with an EffectorResult
(bus/work_results.py) of the same kind, which the engine's recorder turns
into the kind's `done` or `failed` command.

Why in bus/: the effectors (which act) and orchestration (which records)
both need this table, and neither may import the other; bus/ is the layer
below both, and what it declares is what travels between them on the bus.
The effector's side of a kind (reading its plan, acting on libvirt) is in
effectors/handlers/, keyed by the same name and checked against this table
when the effectors are imported.

A work item's id (work_id) is derived from the requesting event (aggregate
id and version), so a redelivered event is the same work and its result is
recorded once. It is not an engine Operation's id: that one, when an
operation asked for the work, travels as the correlation id.
"""

from __future__ import annotations

import uuid
from uuid import UUID

import msgspec

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.naming import aggregate_of, parse_type
from cloud_engine.engine.commands.base import Command
from cloud_engine.engine.commands.compute import (
    CompleteVmMigration,
    FailVm,
    FailVmExpunge,
    FailVmMedia,
    FailVmMigration,
    FailVmReboot,
    MarkVmExpunged,
    MarkVmMediaChanged,
    MarkVmRebooted,
    MarkVmRunning,
    MarkVmStopped,
)
from cloud_engine.engine.commands.network import (
    ActivateNetworkRule,
    FailNetworkRule,
    MarkNetworkRuleRevoked,
)
from cloud_engine.engine.commands.storage import (
    FailSnapshot,
    FailTemplate,
    FailVolume,
    FailVolumeMove,
    MarkSnapshotCreated,
    MarkTemplateDownloaded,
    MarkVolumeCreated,
    MarkVolumeMoved,
    MarkVolumeResized,
    MarkVolumeReverted,
)


class WorkKind(msgspec.Struct, frozen=True):
    """One kind of work, declared once."""

    name: str  # "vm.start": the work item's kind and its result's
    event: str  # "vm.start_requested": the event that asks for it, in any version
    # The command the recorder submits for a succeeded result (None: nothing
    # to record), with the aggregate's id as `<aggregate>_id` ...
    done: type[Command] | None = None
    # ... and for a failed one, with the effector's error as its `reason`.
    failed: type[Command] | None = None
    # The event's data says whether to force it (a stop): carried on the item.
    forced: bool = False

    @property
    def aggregate(self) -> str:
        """The aggregate type whose events ask for it (and whose topic the
        effectors consume)."""
        return aggregate_of(self.event)

    def done_command(self, aggregate_id: UUID) -> Command | None:
        if self.done is None:
            return None
        return self.done(**{f"{self.aggregate}_id": aggregate_id})

    def failed_command(self, aggregate_id: UUID, reason: str) -> Command | None:
        if self.failed is None:
            return None
        return self.failed(**{f"{self.aggregate}_id": aggregate_id, "reason": reason})


def _table(*kinds: WorkKind) -> dict[str, WorkKind]:
    table = {k.name: k for k in kinds}
    events = {k.event for k in kinds}
    if len(table) != len(kinds) or len(events) != len(kinds):
        raise ValueError("a work kind or its event is declared twice")
    return table


KINDS: dict[str, WorkKind] = _table(
    WorkKind("vm.start", "vm.start_requested", done=MarkVmRunning, failed=FailVm),
    WorkKind("vm.stop", "vm.stop_requested", done=MarkVmStopped, failed=FailVm, forced=True),
    WorkKind("vm.reboot", "vm.rebooted", done=MarkVmRebooted, failed=FailVmReboot),
    # The CD-ROM of a running domain changed in place (a stopped VM's
    # drive is its definition's, written at its next start: nothing to do).
    WorkKind("vm.iso_insert", "vm.iso_attached", done=MarkVmMediaChanged, failed=FailVmMedia),
    WorkKind("vm.iso_eject", "vm.iso_detached", done=MarkVmMediaChanged, failed=FailVmMedia),
    # The VM is recorded Destroyed before its domain goes: nothing to record.
    WorkKind("vm.destroy", "vm.destroyed"),
    WorkKind("vm.expunge", "vm.expunge_requested", done=MarkVmExpunged, failed=FailVmExpunge),
    # A Destroyed VM's domain found running (an Expunged one's left
    # defined) after its own work failed or was lost: asked again by
    # convergence. Nothing to record: the next reconcile round tells.
    WorkKind("vm.domain_stop", "vm.domain_stop_requested"),
    WorkKind(
        "vm.migrate", "vm.migration_requested", done=CompleteVmMigration, failed=FailVmMigration
    ),
    WorkKind(
        "volume.create", "volume.creation_requested", done=MarkVolumeCreated, failed=FailVolume
    ),
    WorkKind("volume.resize", "volume.resize_requested", done=MarkVolumeResized, failed=FailVolume),
    # Like a VM's destroy: the volume is recorded Destroyed before its file goes.
    WorkKind("volume.delete", "volume.destroyed"),
    WorkKind(
        "volume.revert", "volume.revert_requested", done=MarkVolumeReverted, failed=FailVolume
    ),
    # A volume's own migration (volume.migrate); an offline VM migration's
    # disks move as part of vm.migrate (volume.move_requested is no work).
    WorkKind(
        "volume.move", "volume.migration_requested", done=MarkVolumeMoved, failed=FailVolumeMove
    ),
    WorkKind("snapshot.create", "snapshot.created", done=MarkSnapshotCreated, failed=FailSnapshot),
    WorkKind(
        "template.download",
        "template.download_requested",
        done=MarkTemplateDownloaded,
        failed=FailTemplate,
    ),
    # The network's virtual router, once its segment has a tag to ride on
    # (nothing to record: the reconciler keeps it, rules need it first).
    WorkKind("network.router", "network.tag_assigned"),
    WorkKind("network.router_remove", "network.destroyed"),
    WorkKind(
        "network_rule.apply",
        "network_rule.created",
        done=ActivateNetworkRule,
        failed=FailNetworkRule,
    ),
    WorkKind(
        "network_rule.revoke",
        "network_rule.revoking",
        done=MarkNetworkRuleRevoked,
        failed=FailNetworkRule,
    ),
)

_BY_EVENT = {k.event: k for k in KINDS.values()}

# The aggregate types whose topics carry work, in the table's order.
WORK_AGGREGATES: tuple[str, ...] = tuple(dict.fromkeys(k.aggregate for k in KINDS.values()))

_WORK_IDS = UUID("6f1d3c52-8b1e-4f5e-9a57-0c6d1f2b7e11")


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    work_id: UUID  # work_id(aggregate_id, version): the same for a redelivery
    kind: str  # a name in KINDS
    aggregate_id: UUID
    version: int  # the requesting event's aggregate version
    position: int  # its global position in the log
    # The requesting event's: the engine Operation's id when one asked.
    correlation_id: str = ""
    forced: bool = False  # vm.stop

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.kind!r} is not a work kind")


def work_id(aggregate_id: UUID, version: int) -> UUID:
    """The id of the work asked for by an aggregate's event at this version.
    Results are deduplicated on it: neither its inputs nor _WORK_IDS may
    change."""
    return uuid.uuid5(_WORK_IDS, f"{aggregate_id}:{version}")


class _ForcedData(msgspec.Struct):
    forced: bool = False


def work_for(event: CloudEvent) -> WorkItem | None:
    """The work an event asks for, or None if it asks for none."""
    parsed = parse_type(event.type)
    if parsed is None:
        return None
    kind = _BY_EVENT.get(parsed.event)
    if kind is None:
        return None
    forced = False
    if kind.forced:
        forced = msgspec.json.decode(event.data or b"{}", type=_ForcedData).forced
    return WorkItem(
        work_id=work_id(event.aggregate_id, event.aggregate_version),
        kind=kind.name,
        aggregate_id=event.aggregate_id,
        version=event.aggregate_version,
        position=event.position,
        correlation_id=event.correlation_id,
        forced=forced,
    )
