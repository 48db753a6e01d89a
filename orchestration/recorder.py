"""Records effector results as events, through ordinary commands.

A result of work item X becomes one command (a VM marked running, a volume
marked created, a failure with libvirt's error as the reason: its work
kind's `done` or `failed` in bus/work.py) submitted with the idempotency
key `effector:<work id>:<outcome>`, so a result delivered twice is recorded
once. A command the domain refuses (the resource moved on meanwhile, e.g.
stopped while its start was in flight) is logged and skipped: the later
work item's own result brings the record up to date. Offsets are committed
only after the command was stored.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import structlog
from aiokafka import AIOKafkaConsumer

from cloud_engine.bus.work import KINDS
from cloud_engine.bus.work_results import (
    EffectorResult,
    decode,
    ensure_results_topic,
    results_topic,
)
from cloud_engine.engine.commands.base import Command, CommandContext
from cloud_engine.engine.commands.compute import RecordVmDrift
from cloud_engine.engine.commands.liveness import (
    RecordHostAnswered,
    RecordSharedPoolUnavailable,
    RecordUnknownDomain,
    RecordVolumeDrift,
    SuspectHost,
)
from cloud_engine.engine.commands.network import RecordNetworkRuleDrift
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.service import CommandService

log = structlog.get_logger("orchestration.recorder")

REASON_MAX = 500


def command_for(result: EffectorResult) -> Command | None:
    """The command that records a result, or None when there is nothing to
    record (a domain destroyed, a volume deleted: kinds without commands).
    Drift is recorded on what it is about: a VM's state on the VM, a
    volume's on the volume, an unknown domain and a shared pool the host
    lacks on the host."""
    target = result.aggregate_id
    if result.kind == "drift.vm_state":
        return RecordVmDrift(
            vm_id=target,
            observed=_text(result.observed, 200, "unknown"),
            expected=_text(result.expected, 200, "unknown"),
        )
    if result.kind == "host.unreachable":
        # Suspect only: Down needs the heartbeat's word too (automation).
        seen = result.observed or "unreachable"
        return SuspectHost(
            host_id=target,
            reason=_text(f"libvirt {seen}: {result.error or 'no error text'}", REASON_MAX, seen),
        )
    if result.kind == "drift.volume":
        return RecordVolumeDrift(
            volume_id=target,
            observed=_text(result.observed, 200, "unknown"),
            expected=_text(result.expected, 200, "unknown"),
        )
    if result.kind == "drift.unknown_domain" and result.host_id is not None:
        return RecordUnknownDomain(
            host_id=result.host_id, domain_id=target, observed=_text(result.observed, 200, "seen")
        )
    if result.kind == "drift.host_pool" and result.host_id is not None:
        return RecordSharedPoolUnavailable(
            host_id=result.host_id,
            pool_id=target,
            observed=_text(result.observed, REASON_MAX, "not ready"),
        )
    if result.kind == "host.reachable":
        return RecordHostAnswered(host_id=target)
    if result.kind == "drift.network_rule":
        return RecordNetworkRuleDrift(
            network_rule_id=target, detail=_text(result.observed, 2000, "repaired")
        )
    kind = KINDS.get(result.kind)
    if kind is None:
        return None
    if result.outcome == "succeeded":
        return kind.done_command(target)
    return kind.failed_command(target, _text(result.error, REASON_MAX, "failed without a message"))


def _text(message: str | None, limit: int, missing: str) -> str:
    # Messages come from libvirt, qemu-img and HTTP servers: a NUL in one
    # would be refused by the domain and the result never recorded.
    return ((message or "").replace("\x00", "").strip() or missing)[:limit]


def context_for(result: EffectorResult) -> CommandContext:
    return CommandContext(
        actor=f"effector:{result.effector or 'unknown'}",
        correlation_id=result.correlation_id,
        causation_id=str(result.work_id),
        idempotency_key=f"effector:{result.work_id}:{result.outcome}",
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

    async def _record_all(self, results: list[EffectorResult]) -> None:
        for result in results:
            await self.record(result)

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_results_topic(self.bootstrap, self.prefix)
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
            fetch_max_wait_ms=20,  # see ConsumerConfig.fetch_max_wait_ms
        )
        await asyncio.wait_for(consumer.start(), 30)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=100)
                # One aggregate's results in order, different aggregates'
                # concurrently: their commands then share group commits.
                by_aggregate: dict[UUID, list[EffectorResult]] = {}
                for records in batches.values():
                    for record in records:
                        try:
                            result = decode(record.value or b"")
                        except ValueError as e:  # msgspec errors derive from it
                            log.error("result_malformed", offset=record.offset, error=str(e))
                            continue
                        by_aggregate.setdefault(result.aggregate_id, []).append(result)
                await asyncio.gather(*(self._record_all(r) for r in by_aggregate.values()))
                if batches:
                    await consumer.commit()
        finally:
            await consumer.stop()
