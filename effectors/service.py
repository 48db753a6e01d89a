"""The effector process: work from Kafka, results back to Kafka, and the
reconciler beside it (every interval and on libvirt lifecycle events).

It consumes the topics of the aggregates whose events ask for work
(bus/work.py) through the consumer base (its own consumer group per zone
set, offsets committed only after the result was acknowledged by the
broker), has the work kind's handler (effectors/handlers/) read the plan
from the read models, carries it out in a thread and publishes the result. An
effector serves only the zones it is configured for (all zones when none is
given): the effectors of one zone being down stops only that zone's work.
"""

from __future__ import annotations

import asyncio
import socket
from uuid import UUID

import structlog
from aiokafka import AIOKafkaProducer

from cloud_engine.bus.cloudevents import CloudEvent
from cloud_engine.bus.consumer import ConsumerConfig, EventConsumer, MemoryDeduplicator
from cloud_engine.bus.naming import topic_for
from cloud_engine.bus.work import WORK_AGGREGATES, WorkItem, work_for
from cloud_engine.bus.work_results import (
    EffectorResult,
    encode,
    ensure_results_topic,
    results_topic,
)
from cloud_engine.effectors.compute.spec import DomainType
from cloud_engine.effectors.desired import ReadModels
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.handlers import HANDLERS
from cloud_engine.effectors.handlers.base import Reads
from cloud_engine.effectors.mapping import Uplink
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.own_acts import OwnActs
from cloud_engine.effectors.reconciler import Reconciler, start_libvirt_event_loop
from cloud_engine.effectors.router_reconciler import reconcile_routers
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import create_pool

log = structlog.get_logger("effectors.service")

POOL_SIZE = 6  # read-model connections


def effector_config(
    bootstrap: str, prefix: str, zones: frozenset[UUID] | None = None
) -> ConsumerConfig:
    scope = "all" if not zones else "+".join(sorted(z.hex[:12] for z in zones))
    return ConsumerConfig(
        bootstrap=bootstrap,
        group_id=f"{prefix}.effector.{scope}",
        topics=[topic_for(prefix, t) for t in WORK_AGGREGATES],
        topic_prefix=prefix,
        max_records=50,
        concurrent_keys=True,  # work on different aggregates at once
    )


class EffectorService:
    def __init__(
        self,
        target: DatabaseTarget,
        config: ConsumerConfig,
        *,
        zones: frozenset[UUID] | None = None,
        names: Names | None = None,
        name: str | None = None,
        stop_timeout_s: float = 30.0,
        reconcile_interval_s: float = 30.0,
        down_after: int = 2,
        uplink: Uplink | None = None,
        domain_type: DomainType = "qemu",
    ) -> None:
        self.target = target
        self.reconcile_interval_s = reconcile_interval_s
        # Failed rounds (each a connect retried for ~0.5 s, 0.5 s apart)
        # before a host is reported unreachable (then Suspect).
        self.down_after = down_after
        self.config = config
        self.zones = zones or None
        self.name = name or f"effector@{socket.gethostname()}"
        self.executor = Executor(
            self.name,
            names=names,
            stop_timeout_s=stop_timeout_s,
            uplink=uplink,
            domain_type=domain_type,
        )
        self.own_acts = OwnActs()
        self.results = results_topic(config.topic_prefix)
        self.published: list[EffectorResult] = []  # this process's, for logs and tests
        self._reads: Reads | None = None
        self._producer: AIOKafkaProducer | None = None
        self.consumer: EventConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        # Before any libvirt connection opens: only connections opened after
        # it deliver lifecycle events (which wake the reconciler).
        start_libvirt_event_loop()
        # A poll's work items (up to max_records, on different aggregates)
        # read their plans at once, beside the reconciler's rounds: with two
        # connections the plans queued for them (docs/performance.md).
        pool = await create_pool(self.target, max_size=POOL_SIZE, single_reads=True)
        await ensure_results_topic(self.config.bootstrap, self.config.topic_prefix)
        producer = AIOKafkaProducer(bootstrap_servers=self.config.bootstrap, acks="all")
        await producer.start()
        models = ReadModels(pool, self.target.schema)
        reads = self._reads = Reads(models, self.zones)
        self._producer = producer
        self.consumer = EventConsumer(self.config, self.handle, MemoryDeduplicator())
        reconciler = Reconciler(
            models,
            self.publish,
            zones=self.zones,
            effector=self.name,
            hypervisor_for=self.executor.hypervisor,
            interval_s=self.reconcile_interval_s,
            down_after=self.down_after,
            names=self.executor.names,
            lifecycle_events=True,
            routers=lambda: reconcile_routers(self.executor, reads),
            own_acts=self.own_acts,
        )
        consumer_task = asyncio.create_task(self.consumer.run())
        reconciler_stop = asyncio.Event()
        reconciler_task = asyncio.create_task(reconciler.run(reconciler_stop))
        try:
            await asyncio.wait(
                [consumer_task, asyncio.create_task(stop.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if consumer_task.done():
                consumer_task.result()
        finally:
            if self.consumer is not None:
                self.consumer.stop()
            reconciler_stop.set()
            await asyncio.gather(consumer_task, reconciler_task, return_exceptions=True)
            await producer.stop()
            await pool.close()
            self.executor.close()

    async def handle(self, event: CloudEvent, _: object) -> None:
        item = work_for(event)
        if item is None:
            return
        result = await self.execute(item)
        if result is not None:
            await self.publish(result)

    async def execute(self, item: WorkItem) -> EffectorResult | None:
        """The result of one work item, or None when it is another zone's."""
        plan = await HANDLERS[item.kind].plan(self._require_reads(), item)
        if plan is None:
            return None
        self.own_acts.begin(item.aggregate_id)
        try:
            return await asyncio.to_thread(self.executor.run, item, plan)
        finally:
            self.own_acts.end(item.aggregate_id)

    async def publish(self, result: EffectorResult) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the effector is not running")
        await producer.send_and_wait(
            self.results, encode(result), key=str(result.aggregate_id).encode()
        )
        self.published.append(result)
        log.info(
            "result_published",
            kind=result.kind,
            aggregate_id=str(result.aggregate_id),
            outcome=result.outcome,
            observed=result.observed,
            error=result.error,
            correlation_id=result.correlation_id,
        )

    def _require_reads(self) -> Reads:
        if self._reads is None:
            raise RuntimeError("the effector is not running")
        return self._reads
