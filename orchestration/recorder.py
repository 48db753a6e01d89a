"""Records effector results as events, through ordinary commands.

A result for operation X becomes one command (a VM marked running, a volume
marked created, a failure with libvirt's error as the reason) submitted with
the idempotency key `effector:<operation id>:<outcome>`, so a result
delivered twice is recorded once. A command the domain refuses (the resource
moved on meanwhile, e.g. stopped while its start was in flight) is logged
and skipped: the later work item's own result brings the record up to date.
Offsets are committed only after the command was stored.
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaConsumer

from effectors.results import EffectorResult, decode, ensure_results_topic, results_topic
from engine.commands.base import Command, CommandContext
from engine.commands.compute import (
    FailVm,
    MarkVmExpunged,
    MarkVmRunning,
    MarkVmStopped,
    RecordVmDrift,
)
from engine.commands.hosts import DeclareHostDown
from engine.commands.storage import (
    FailSnapshot,
    FailVolume,
    MarkSnapshotCreated,
    MarkVolumeCreated,
    MarkVolumeResized,
    MarkVolumeReverted,
)
from engine.errors import DomainError
from engine.service import CommandService

log = structlog.get_logger("orchestration.recorder")

REASON_MAX = 500


def command_for(result: EffectorResult) -> Command | None:
    """The command that records a result, or None when there is nothing to
    record (a reboot done, a domain powered off; unknown domains and volume
    drift are only logged until their aggregates have events for them)."""
    target = result.aggregate_id
    reason = (result.error or "failed without a message")[:REASON_MAX]
    if result.outcome == "succeeded" and not result.kind.startswith(("drift.", "host.")):
        return {
            "vm.start": MarkVmRunning(vm_id=target),
            "vm.stop": MarkVmStopped(vm_id=target),
            "vm.expunge": MarkVmExpunged(vm_id=target),
            "volume.create": MarkVolumeCreated(volume_id=target),
            "volume.resize": MarkVolumeResized(volume_id=target),
            "volume.revert": MarkVolumeReverted(volume_id=target),
            "snapshot.create": MarkSnapshotCreated(snapshot_id=target),
        }.get(result.kind)
    if result.kind == "drift.vm_state":
        return RecordVmDrift(
            vm_id=target,
            observed=(result.observed or "unknown")[:200],
            expected=(result.expected or "unknown")[:200],
        )
    if result.kind == "host.unreachable":
        return DeclareHostDown(host_id=target)
    if result.kind in ("vm.start", "vm.stop"):
        return FailVm(vm_id=target, reason=reason)
    if result.kind in ("volume.create", "volume.resize", "volume.revert"):
        return FailVolume(volume_id=target, reason=reason)
    if result.kind == "snapshot.create":
        return FailSnapshot(snapshot_id=target, reason=reason)
    return None


def context_for(result: EffectorResult) -> CommandContext:
    return CommandContext(
        actor=f"effector:{result.effector or 'unknown'}",
        correlation_id=result.correlation_id,
        causation_id=str(result.operation_id),
        idempotency_key=f"effector:{result.operation_id}:{result.outcome}",
    )


class ResultRecorder:
    def __init__(self, service: CommandService, bootstrap: str, prefix: str) -> None:
        self.service = service
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.topic = results_topic(prefix)
        self.group = f"{prefix}.engine.results"
        self.recorded = 0

    async def record(self, result: EffectorResult) -> None:
        command = command_for(result)
        if command is None:
            log.info(
                "result_noted",
                kind=result.kind,
                aggregate_id=str(result.aggregate_id),
                outcome=result.outcome,
                observed=result.observed,
                error=result.error,
            )
            return
        try:
            await self.service.execute_async(command, context_for(result))
            self.recorded += 1
        except DomainError as e:
            log.warning(
                "result_not_recorded",
                kind=result.kind,
                aggregate_id=str(result.aggregate_id),
                reason=str(e),
            )

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_results_topic(self.bootstrap, self.prefix)
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
        )
        await asyncio.wait_for(consumer.start(), 30)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=100)
                for records in batches.values():
                    for record in records:
                        try:
                            result = decode(record.value or b"")
                        except ValueError as e:  # msgspec errors derive from it
                            log.error("result_malformed", offset=record.offset, error=str(e))
                            continue
                        await self.record(result)
                if batches:
                    await consumer.commit()
        finally:
            await consumer.stop()
