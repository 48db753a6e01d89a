"""Effector results recorded back as events: commands -> store -> relay ->
Kafka -> effector -> libvirt/qemu-img -> results topic -> ResultRecorder ->
commands -> store, on real PostgreSQL, the dev broker and qemu:///system.

One VM's way: its template fetched over HTTP (template Ready), its root
volume created from the template (volume Ready, backing onto the template's
base image), attached, the VM started (Running, the domain running with that
disk); the domain destroyed behind the engine's back -> the reconciler's
drift is recorded on the VM; a result delivered again is recorded once.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from effector_pipeline import Pipeline, domains_with_uuid, is_running, wait_for
from fabric_setup import effector_fabric

from cloud_engine.bus.work_results import EffectorResult, encode, results_topic
from cloud_engine.effectors.naming import Names
from cloud_engine.engine.commands.compute import CreateVm, PlaceVm, RequestVmStart
from cloud_engine.engine.commands.storage import (
    AttachVolume,
    CreateVolume,
    RequestTemplateDownload,
    RequestVolumeCreation,
)
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VmSpec

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

GiB = 1024**3


def state_of(store: EventStore, aggregate_id: uuid.UUID) -> str:
    aggregate = store.load(aggregate_id)
    assert aggregate is not None
    return str(aggregate.state)


def event_names(store: EventStore, aggregate_id: uuid.UUID) -> list[str]:
    return [type(e).__qualname__.rsplit(".", 1)[-1] for e in store.events_of(aggregate_id)]


async def test_results_come_back_as_events(
    pg_target, service, store, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix,
    tmp_path, served,
):  # fmt: skip
    names = Names(prefix=name_prefix)
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    run = service.execute_async
    try:
        pipeline.start_engine_side()
        recorder = pipeline.start_recorder(service)
        effector = pipeline.start_effector(names, reconcile_interval_s=1.0)
        fabric = await asyncio.to_thread(effector_fabric, service, libvirt_uri, tmp_path, served)

        await run(RequestTemplateDownload(template_id=fabric.template))
        await wait_for(
            "the template Ready", lambda: state_of(store, fabric.template) == "Ready", pipeline
        )
        assert served.requests == ["/tiny.qcow2"]

        vm = (
            await run(
                CreateVm(
                    account="acme",
                    name="vm-1",
                    zone_id=fabric.zone,
                    template_id=fabric.template,
                    spec=VmSpec(cpus=1, ram_mb=64, root_disk_gb=1),
                )
            )
        ).aggregate_id
        root = (
            await run(
                CreateVolume(
                    account="acme",
                    name="vm-1-root",
                    zone_id=fabric.zone,
                    size_bytes=GiB,
                    kind="root",
                    template_id=fabric.template,
                )
            )
        ).aggregate_id
        await run(RequestVolumeCreation(volume_id=root, pool_id=fabric.pool))
        await wait_for("the volume Ready", lambda: state_of(store, root) == "Ready", pipeline)
        volume_file = tmp_path / "primary" / names.volume(root)
        assert volume_file.exists()

        await run(AttachVolume(volume_id=root, vm_id=vm, device_id=0))
        await run(PlaceVm(vm_id=vm, host_id=fabric.host, pool_id=fabric.pool))
        await run(RequestVmStart(vm_id=vm, host_id=fabric.host))
        await wait_for("the VM Running", lambda: state_of(store, vm) == "Running", pipeline)
        assert is_running(hypervisor, vm)
        (dom,) = domains_with_uuid(hypervisor, vm)
        assert str(volume_file) in dom.XMLDesc(0)

        # The same result delivered again is recorded once.
        (started,) = [r for r in effector.published if r.kind == "vm.start"]
        before = len(store.events_of(vm))
        recorded = recorder.recorded
        await publish_again(broker, topic_prefix, started)
        await wait_for("the redelivery handled", lambda: recorder.recorded > recorded, pipeline)
        assert len(store.events_of(vm)) == before

        # Behind the engine's back: the reconciler's drift becomes an event.
        await asyncio.to_thread(dom.destroy)
        await wait_for(
            "the drift recorded",
            lambda: "DriftObserved" in event_names(store, vm),
            pipeline,
        )
        vm_state = store.load(vm)
        assert "shutoff" in str(getattr(vm_state, "last_error", ""))
        assert event_names(store, fabric.template)[-1] == "Downloaded"
        assert event_names(store, root).count("CreationCompleted") == 1
    finally:
        await pipeline.close()


async def publish_again(broker: str, prefix: str, result: EffectorResult) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            results_topic(prefix), encode(result), key=str(result.aggregate_id).encode()
        )
    finally:
        await producer.stop()
