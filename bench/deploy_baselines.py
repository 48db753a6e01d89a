"""bench/deploy.py's baselines, run in its own process without the pipeline:
the six commands a deploy stores, through the command service alone; and
the effector's own work per deploy on one test driver host."""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path

from deploy_fabric import VM_SPEC, Fabric, GiB, deploy_command, host_uris, template_checksum
from deploy_pipeline import Sample, closed_loop

from cloud_engine.bus.work import WorkItem, work_id
from cloud_engine.effectors.desired import (
    HostView,
    ImageStoreView,
    PoolView,
    TemplateView,
    VmSize,
    VmView,
    VolumeView,
)
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.handlers.template import TemplateSource
from cloud_engine.effectors.handlers.vm import VmPlan
from cloud_engine.effectors.handlers.volume import VolumePlan
from cloud_engine.effectors.naming import Names
from cloud_engine.engine.commands.base import Command
from cloud_engine.engine.commands.compute import MarkVmRunning
from cloud_engine.engine.commands.operations import AdvanceOperation, PlaceOperation
from cloud_engine.engine.commands.storage import MarkVolumeCreated
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.service import CommandService


async def command_chain(
    service: CommandService, fabric: Fabric, count: int, concurrency: int
) -> tuple[float, list[float]]:
    """The pipeline's six commands per deploy through the command service
    alone; (deploys/s, per-deploy latency in s)."""
    next_host = itertools.cycle(fabric.hosts)

    async def one(n: int) -> Sample:
        vm_id = uuid.uuid4()
        submitted = time.time()
        result = await service.execute_async(deploy_command(fabric, n, vm_id, "first-fit"))
        op = result.aggregate_id
        chain: list[Command] = [
            PlaceOperation(operation_id=op, host_id=next(next_host), pool_ids=(fabric.pool,)),
            MarkVolumeCreated(volume_id=deploy_ids.volume_id(op, 0)),
            AdvanceOperation(operation_id=op),
            MarkVmRunning(vm_id=vm_id),
        ]
        for command in chain:
            await service.execute_async(command)
        running = time.time() - submitted
        await service.execute_async(AdvanceOperation(operation_id=op))
        return Sample(submitted, 0.0, running, running, True)

    started = time.perf_counter()
    samples = await closed_loop(count, concurrency, one)
    elapsed = time.perf_counter() - started
    return count / elapsed, [s.running_s for s in samples]


def effector_alone(count: int, tmp: Path, template_url: str) -> float:
    """ms of effector work per deploy: Executor.run of volume.create
    (template-backed root) and vm.start (define + start) in a loop on one
    test driver host."""
    names = Names(prefix=f"ce-b{uuid.uuid4().hex[:8]}-")
    uri = host_uris(1, tmp / "baseline-hosts", shared=False)[0]
    executor = Executor("effector@baseline", names=names, stop_timeout_s=5.0)
    zone = uuid.uuid4()
    template = TemplateView(
        id=uuid.uuid4(),
        version=3,
        zone_id=zone,
        state="Ready",
        url=template_url,
        format="qcow2",
        checksum=template_checksum(tmp),
    )
    store = ImageStoreView(
        id=uuid.uuid4(),
        version=1,
        zone_id=zone,
        state="Enabled",
        url=str(tmp / "baseline-secondary"),
        protocol="file",
    )
    source = TemplateSource(template=template, store=store)
    host = HostView(
        id=uuid.uuid4(), version=1, name="h", zone_id=zone, state="Enabled", libvirt_uri=uri
    )
    pool = PoolView(
        id=uuid.uuid4(), version=1, zone_id=zone, state="Up", url=str(tmp / "baseline-primary")
    )
    size = VmSize(cpus=VM_SPEC.cpus, ram_mb=VM_SPEC.ram_mb, root_disk_gb=VM_SPEC.root_disk_gb)

    def deploy(n: int) -> None:
        vm = VmView(
            id=uuid.uuid4(),
            version=6,
            name=f"vm{n}",
            zone_id=zone,
            state="Starting",
            spec=size,
            host_id=host.id,
            pool_id=pool.id,
        )
        volume = VolumeView(
            id=uuid.uuid4(),
            version=2,
            zone_id=zone,
            state="Creating",
            size_bytes=VM_SPEC.root_disk_gb * GiB,
            pool_id=pool.id,
            template_id=template.id,
            host_id=host.id,
        )
        item = WorkItem(
            work_id=work_id(volume.id, 2),
            kind="volume.create",
            aggregate_id=volume.id,
            version=2,
            position=2 * n,
        )
        created = executor.run(item, VolumePlan(volume, pool, host, None, source))
        attached = VolumeView(
            id=volume.id,
            version=4,
            zone_id=zone,
            state="Attached",
            size_bytes=volume.size_bytes,
            pool_id=pool.id,
            vm_id=vm.id,
            device_id=0,
            template_id=template.id,
            host_id=host.id,
        )
        start = WorkItem(
            work_id=work_id(vm.id, 6),
            kind="vm.start",
            aggregate_id=vm.id,
            version=6,
            position=2 * n + 1,
        )
        started = executor.run(start, VmPlan(vm=vm, host=host, disks=((attached, pool),)))
        for result in (created, started):
            if result.outcome != "succeeded":
                raise RuntimeError(f"effector baseline: {result.kind} failed: {result.error}")

    try:
        deploy(0)  # the template fetched and the pool's base image made, not timed
        started = time.perf_counter()
        for n in range(1, count + 1):
            deploy(n)
        elapsed = time.perf_counter() - started
    finally:
        conn = executor.hypervisor(uri).conn
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(names.prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for p in conn.listAllStoragePools(0):
            if p.name().startswith(names.prefix):
                for vol in p.listAllVolumes(0):
                    vol.delete(0)
                p.destroy()
                p.undefine()
        executor.close()
    return 1000 * elapsed / count
