"""The whole effector path on real PostgreSQL, the dev broker and
qemu:///system: commands -> store -> relay -> Kafka -> projection worker
(read models) and EffectorService -> libvirt -> result on Kafka.

The relay, the projection worker and the effector run in-process as asyncio
tasks sharing one stop event; the crash test runs a first effector in a
spawned child process and SIGKILLs it between define and start.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
from effector_pipeline import Pipeline, domains_with_uuid, is_running, read_topic, wait_for

from cloud_engine.bus.cloudevents import CloudEvent, from_record
from cloud_engine.bus.consumer import ConsumerConfig
from cloud_engine.bus.naming import topic_for
from cloud_engine.bus.work import work_id
from cloud_engine.bus.work_results import EffectorResult, decode, results_topic
from cloud_engine.effectors.executor import FAULT_ENV
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.engine.commands.compute import CreateVm, PlaceVm, RequestVmStart
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.virtual.vm import VmSpec
from cloud_engine.infra.database import DatabaseTarget
from tests.fabric import FabricSpec, HostSpec, PoolSpec, TemplateSpec, build

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

MiB = 1024 * 1024


class Placed(NamedTuple):
    zone: uuid.UUID
    host: uuid.UUID
    vm: uuid.UUID


def place_vm(service: CommandService, libvirt_uri: str, pool_dir: Path) -> Placed:
    """A zone, pod, cluster, host (on the test's libvirtd), dir pool and
    template, and a 64 MiB VM placed on the host (no disks, no NICs)."""
    made = build(
        service,
        FabricSpec(
            hosts=(HostSpec(libvirt_uri=libvirt_uri),),
            pools=(PoolSpec(url=str(pool_dir / "primary"), capacity_bytes=1 << 30),),
            # Loopback, where nothing listens: fails fast.
            templates=(TemplateSpec(url="http://127.0.0.1:9/tiny.qcow2", size_bytes=MiB),),
        ),
    )
    zone, host, pool, template = made.zone, made.host, made.pool, made.template
    vm = service.execute(
        CreateVm(
            account="acme",
            name="vm-1",
            zone_id=zone,
            template_id=template,
            spec=VmSpec(cpus=1, ram_mb=64, root_disk_gb=1),
        )
    ).aggregate_id
    service.execute(PlaceVm(vm_id=vm, host_id=host, pool_id=pool))
    return Placed(zone, host, vm)


def start_requested(records: list) -> CloudEvent | None:
    for r in records:
        event = from_record(r.headers, r.value, topic=r.topic, partition=r.partition)
        if event.type.startswith("io.cloudengine.vm.start_requested."):
            return event
    return None


def start_results(records: list, vm: uuid.UUID) -> list[EffectorResult]:
    results = [decode(r.value) for r in records]
    return [r for r in results if r.kind == "vm.start" and r.aggregate_id == vm]


async def test_start_requested_runs_the_domain_and_publishes_one_operation(
    pg_target, service, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix, pool_dir
):
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    try:
        pipeline.start_engine_side()
        effector = pipeline.start_effector(Names(prefix=name_prefix))
        placed = await asyncio.to_thread(place_vm, service, libvirt_uri, pool_dir)
        outcome = await asyncio.to_thread(
            service.execute, RequestVmStart(vm_id=placed.vm, host_id=placed.host)
        )
        assert outcome.aggregate_id == placed.vm

        await wait_for(
            "the vm.start result",
            lambda: any(r.kind == "vm.start" for r in effector.published),
            pipeline,
        )

        def starts() -> list[EffectorResult]:
            return [r for r in effector.published if r.kind == "vm.start"]

        (first,) = starts()
        assert first.outcome == "succeeded", first.error
        assert first.observed == "running"
        assert first.aggregate_id == placed.vm
        assert first.host_id == placed.host
        assert first.effector == "effector@test"
        assert is_running(hypervisor, placed.vm)
        (dom,) = domains_with_uuid(hypervisor, placed.vm)
        assert dom.name() == f"{name_prefix}vm-{placed.vm.hex[:12]}"

        # Redelivery: the same event handled twice more is the same operation.
        vm_records = await read_topic(
            broker, topic_for(topic_prefix, "vm"), lambda rs: start_requested(rs) is not None
        )
        event = start_requested(vm_records)
        assert event is not None
        assert first.work_id == work_id(placed.vm, event.aggregate_version)
        assert first.version == event.aggregate_version
        for _ in range(2):
            await effector.handle(event, None)

        assert len(starts()) == 3
        assert {r.work_id for r in starts()} == {first.work_id}
        assert [r.outcome for r in starts()] == ["succeeded"] * 3
        assert len(domains_with_uuid(hypervisor, placed.vm)) == 1
        assert is_running(hypervisor, placed.vm)

        # ... and all three are on the results topic, keyed by the VM.
        records = await read_topic(
            broker,
            results_topic(topic_prefix),
            lambda rs: len(start_results(rs, placed.vm)) >= 3,
        )
        vm_records = [r for r in records if decode(r.value).aggregate_id == placed.vm]
        assert {r.key for r in vm_records} == {str(placed.vm).encode()}
        on_topic = start_results(records, placed.vm)
        assert len(on_topic) == 3
        assert {r.work_id for r in on_topic} == {first.work_id}
        assert {r.outcome for r in on_topic} == {"succeeded"}
    finally:
        await pipeline.close()


# -- SIGKILL between define and start ------------------------------------------


def _child_effector(target: DatabaseTarget, config: ConsumerConfig, prefix: str) -> None:
    """A spawned child: an effector whose executor sleeps between defining
    and starting a domain (the parent kills it there)."""
    os.environ[FAULT_ENV] = "after-define:60"
    effector = EffectorService(
        target, config, names=Names(prefix=prefix), name="effector@child", stop_timeout_s=5.0
    )
    asyncio.run(effector.run(asyncio.Event()))


async def test_effector_killed_between_define_and_start_is_resumed_by_a_fresh_one(
    pg_target, service, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix, pool_dir
):
    config = effector_config(broker, topic_prefix)
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    child = multiprocessing.get_context("spawn").Process(
        target=_child_effector, args=(pg_target, config, name_prefix), daemon=True
    )
    try:
        pipeline.start_engine_side()
        child.start()
        placed = await asyncio.to_thread(place_vm, service, libvirt_uri, pool_dir)
        await asyncio.to_thread(
            service.execute, RequestVmStart(vm_id=placed.vm, host_id=placed.host)
        )

        def defined_not_running() -> bool:
            assert child.is_alive(), f"the child effector exited ({child.exitcode})"
            doms = domains_with_uuid(hypervisor, placed.vm)
            return len(doms) == 1 and not doms[0].isActive()

        await wait_for("the child to define the domain", defined_not_running, pipeline)
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.to_thread(child.join, 10)
        assert child.exitcode == -signal.SIGKILL
        assert not is_running(hypervisor, placed.vm)  # killed before start

        # A fresh effector in the same consumer group gets the uncommitted work.
        effector = pipeline.start_effector(Names(prefix=name_prefix))
        assert effector.config.group_id == config.group_id
        await wait_for(
            "the fresh effector's vm.start result",
            lambda: any(r.kind == "vm.start" for r in effector.published),
            pipeline,
        )
        (result,) = [r for r in effector.published if r.kind == "vm.start"]
        assert result.outcome == "succeeded", result.error
        assert result.observed == "running"
        assert is_running(hypervisor, placed.vm)
        assert len(domains_with_uuid(hypervisor, placed.vm)) == 1

        records = await read_topic(
            broker, results_topic(topic_prefix), lambda rs: len(start_results(rs, placed.vm)) >= 1
        )
        (on_topic,) = start_results(records, placed.vm)  # the child published nothing
        assert on_topic.outcome == "succeeded"
        assert on_topic.work_id == result.work_id
    finally:
        if child.is_alive():
            child.kill()
        if child.pid is not None:
            await asyncio.to_thread(child.join, 10)
        await pipeline.close()
