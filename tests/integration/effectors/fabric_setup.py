"""A small fabric on the test's libvirtd for the engine round-trip tests:
zone, pod, cluster, hosts, a dir pool and a file image store under the
test's temporary directory, two plain networks, and a template served over
loopback HTTP (Registered: the effector fetches it when asked). Built by
tests/fabric.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from effector_pipeline import Pipeline, wait_for
from template_server import Served, make_template_image

from cloud_engine.effectors.naming import Names
from cloud_engine.engine.commands.storage import RequestTemplateDownload
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from tests import fabric

GiB = 1024**3

Fabric = fabric.Fabric[uuid.UUID]


def effector_fabric(
    service: CommandService,
    uri: str,
    tmp: Path,
    served: Served,
    *,
    hosts: int = 1,
    cpu_cores: int = 4,
    ram_mb: int = 4096,
) -> Fabric:
    _, digest = make_template_image(served.root, "tiny.qcow2")
    spec = fabric.FabricSpec(
        hosts=fabric.hosts(hosts, uri, cpu_cores=cpu_cores, ram_mb=ram_mb),
        pools=(fabric.PoolSpec(url=str(tmp / "primary"), capacity_bytes=8 * GiB),),
        image_stores=(fabric.ImageStoreSpec(url=str(tmp / "secondary")),),
        templates=(
            fabric.TemplateSpec(
                url=f"{served.base_url}/tiny.qcow2",
                size_bytes=4 * 1024 * 1024,
                checksum=f"sha256:{digest}",
                state="registered",
            ),
        ),
        networks=tuple(
            fabric.NetworkSpec(name=f"net-{i}", cidr=f"10.{50 + i}.0.0/24") for i in range(2)
        ),
    )
    return fabric.build(service, spec)


async def orchestrated_fabric(
    pipeline: Pipeline,
    service: CommandService,
    store: EventStore,
    uri: str,
    tmp: Path,
    served: Served,
    names: Names,
    **shape: int,
) -> Fabric:
    """The whole in-process pipeline (relay, projections, recorder, operation
    manager, effector) on a fabric whose template is downloaded and Ready."""
    pipeline.start_engine_side()
    pipeline.start_recorder(service)
    pipeline.start_manager(service, store)
    pipeline.start_effector(names)
    made = await asyncio.to_thread(effector_fabric, service, uri, tmp, served, **shape)
    await service.execute_async(RequestTemplateDownload(template_id=made.template))
    await wait_for(
        "template Ready",
        lambda: getattr(store.load(made.template), "state", "") == "Ready",
        pipeline,
    )
    return made
