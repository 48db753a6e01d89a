"""The effector process: work from Kafka, results back to Kafka, and the
reconciler beside it (every interval and on libvirt lifecycle events).

It consumes the vm and volume topics through the consumer base (its own
consumer group per zone set, offsets committed only after the result was
acknowledged by the broker), turns each work event into a plan read from the
read models, carries it out in a thread and publishes the result. An
effector serves only the zones it is configured for (all zones when none is
given): the effectors of one zone being down stops only that zone's work.
"""

from __future__ import annotations

import asyncio
import socket
from uuid import UUID

import msgspec
import structlog
from aiokafka import AIOKafkaProducer

from bus.cloudevents import CloudEvent
from bus.consumer import ConsumerConfig, EventConsumer, MemoryDeduplicator
from bus.naming import topic_for
from bus.pg import create_pool
from effectors.desired import (
    HostView,
    ImageStoreView,
    NetworkView,
    NicView,
    PoolView,
    ReadModels,
    SnapshotView,
    TemplateView,
    VmView,
    VolumeView,
)
from effectors.executor import Executor, TemplateSource, Uplink, VmPlan, first_enabled
from effectors.naming import Names
from effectors.reconciler import Reconciler, start_libvirt_event_loop
from effectors.results import EffectorResult, encode, ensure_results_topic, results_topic
from effectors.work import WorkItem, work_for
from engine.database import DatabaseTarget

log = structlog.get_logger("effectors.service")


def effector_config(
    bootstrap: str, prefix: str, zones: frozenset[UUID] | None = None
) -> ConsumerConfig:
    scope = "all" if not zones else "+".join(sorted(z.hex[:12] for z in zones))
    return ConsumerConfig(
        bootstrap=bootstrap,
        group_id=f"{prefix}.effector.{scope}",
        topics=[topic_for(prefix, t) for t in ("vm", "volume", "snapshot", "template")],
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
        uplink: Uplink | None = None,
    ) -> None:
        self.target = target
        self.reconcile_interval_s = reconcile_interval_s
        self.config = config
        self.zones = zones or None
        self.name = name or f"effector@{socket.gethostname()}"
        self.executor = Executor(
            self.name, names=names, stop_timeout_s=stop_timeout_s, uplink=uplink
        )
        self.results = results_topic(config.topic_prefix)
        self.published: list[EffectorResult] = []  # this process's, for logs and tests
        self._models: ReadModels | None = None
        self._producer: AIOKafkaProducer | None = None
        self.consumer: EventConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        # Before any libvirt connection opens: only connections opened after
        # it deliver lifecycle events (which wake the reconciler).
        start_libvirt_event_loop()
        pool = await create_pool(self.target, max_size=2, single_reads=True)
        await ensure_results_topic(self.config.bootstrap, self.config.topic_prefix)
        producer = AIOKafkaProducer(bootstrap_servers=self.config.bootstrap, acks="all")
        await producer.start()
        self._models = ReadModels(pool, self.target.schema)
        self._producer = producer
        self.consumer = EventConsumer(self.config, self.handle, MemoryDeduplicator())
        reconciler = Reconciler(
            self._models,
            self.publish,
            zones=self.zones,
            effector=self.name,
            hypervisor_for=self.executor.hypervisor,
            interval_s=self.reconcile_interval_s,
            names=self.executor.names,
            lifecycle_events=True,
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
        models = self._require_models()
        if item.kind.startswith("vm."):
            plan = await self._vm_plan(models, item)
            if plan is None:
                return None
            return await asyncio.to_thread(self.executor.run_vm, item, plan)
        if item.kind == "template.download":
            source = await self._template_source(models, item.aggregate_id, item.version)
            if source is None:
                return None
            return await asyncio.to_thread(self.executor.run_template, item, source)
        snapshot_id = None
        volume_id, at_least = item.aggregate_id, item.version
        if item.kind.startswith("snapshot."):
            snapshot = await models.get(SnapshotView, "snapshot", item.aggregate_id, item.version)
            if snapshot is None:
                return None
            snapshot_id, volume_id, at_least = snapshot.id, snapshot.volume_id, 0
        volume = await models.get(VolumeView, "volume", volume_id, at_least)
        if volume is None or not self._serves(volume.zone_id) or volume.pool_id is None:
            return None
        pool = await models.get(PoolView, "storage_pool", volume.pool_id)
        host = await self._volume_host(models, volume)
        if pool is None or host is None:
            log.warning("volume_work_unplaceable", volume_id=str(volume.id))
            return None
        template = None
        if item.kind == "volume.create" and volume.template_id is not None:
            template = await self._template_source(models, volume.template_id, 0)
        return await asyncio.to_thread(
            self.executor.run_volume, item, volume, pool, host, snapshot_id, template
        )

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

    def _serves(self, zone_id: UUID) -> bool:
        return self.zones is None or zone_id in self.zones

    def _require_models(self) -> ReadModels:
        if self._models is None:
            raise RuntimeError("the effector is not running")
        return self._models

    async def _vm_plan(self, models: ReadModels, item: WorkItem) -> VmPlan | None:
        vm = await models.get(VmView, "vm", item.aggregate_id, item.version)
        if vm is None or not self._serves(vm.zone_id):
            return None
        # A destroyed or expunging VM has left its host; its domain is still there.
        host_id = vm.host_id or vm.last_host_id
        if host_id is None:
            log.warning("vm_work_without_host", vm_id=str(vm.id), kind=item.kind)
            return None
        host = await models.get(HostView, "host", host_id)
        if host is None:
            return None
        disks: list[tuple[VolumeView, PoolView]] = []
        for volume in await self._disks(models, vm):
            if volume.pool_id is None or volume.state in ("Destroyed", "Error"):
                continue
            pool = await models.get(PoolView, "storage_pool", volume.pool_id)
            if pool is not None:
                disks.append((volume, pool))
        disks.sort(key=lambda d: d[0].device_id or 0)
        nics: list[tuple[NicView, NetworkView]] = []
        for nic in await models.where(NicView, "nic", "vm_id", vm.id):
            if nic.state == "Released":
                continue
            network = await models.get(NetworkView, "network", nic.network_id)
            if network is not None:
                nics.append((nic, network))
        nics.sort(key=lambda n: n[0].device_id)
        destination = None
        if item.kind == "vm.migrate" and vm.migration_target_id is not None:
            destination = await models.get(HostView, "host", vm.migration_target_id)
        return VmPlan(
            vm=vm, host=host, disks=tuple(disks), nics=tuple(nics), destination=destination
        )

    async def _disks(self, models: ReadModels, vm: VmView) -> list[VolumeView]:
        """The VM's volumes as of the VM's version: its own list of disks (the
        volumes' rows may lag behind it), else (VMs recorded before VMs
        listed their disks) the volumes whose rows name it."""
        if not vm.disks:
            return await models.where(VolumeView, "volume", "vm_id", vm.id)
        found = []
        for device, volume_id in sorted((int(d), v) for d, v in vm.disks.items()):
            volume = await models.get(VolumeView, "volume", volume_id, 1)
            if volume is not None:
                found.append(msgspec.structs.replace(volume, device_id=device))
        return found

    async def _template_source(
        self, models: ReadModels, template_id: UUID, at_least: int
    ) -> TemplateSource | None:
        """A template and its zone's image store: the first enabled one by id,
        so every effector of the zone picks the same store."""
        template = await models.get(TemplateView, "template", template_id, at_least)
        if template is None or not self._serves(template.zone_id):
            return None
        stores = await models.where(ImageStoreView, "image_store", "zone_id", template.zone_id)
        enabled = [s for s in stores if s.state == "Enabled"]
        # No store: the executor reports that as the work's failure.
        return TemplateSource(template=template, store=enabled[0] if enabled else None)

    async def _volume_host(self, models: ReadModels, volume: VolumeView) -> HostView | None:
        # A dir pool lives on a host: the attached VM's host if there is one,
        # else the host named when its creation was asked, else the first
        # enabled host of the volume's zone.
        if volume.vm_id is not None:
            vm = await models.get(VmView, "vm", volume.vm_id)
            if vm is not None and vm.host_id is not None:
                return await models.get(HostView, "host", vm.host_id)
        if volume.host_id is not None:
            return await models.get(HostView, "host", volume.host_id)
        return first_enabled(await models.hosts(frozenset({volume.zone_id})))
