"""A small fabric on the test's libvirtd for the engine round-trip tests:
zone, pod, cluster, hosts, a dir pool and a file image store under the
test's temporary directory, two plain networks, and a template served over
loopback HTTP (Registered: the effector fetches it when asked)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from effector_pipeline import Pipeline, wait_for
from template_server import Served, make_template_image

from cloud_engine.effectors.naming import Names
from cloud_engine.engine.commands.fabric import CreateCluster, CreatePod, CreateZone, RegisterHost
from cloud_engine.engine.commands.network import CreateNetwork
from cloud_engine.engine.commands.storage import RegisterTemplate, RequestTemplateDownload
from cloud_engine.engine.commands.storage_fabric import CreateImageStore, CreateStoragePool
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore

GiB = 1024**3


class Fabric:
    def __init__(
        self,
        service: CommandService,
        uri: str,
        tmp: Path,
        served: Served,
        *,
        hosts: int = 1,
        cpu_cores: int = 4,
        ram_mb: int = 4096,
    ) -> None:
        run = service.execute
        self.zone = run(CreateZone(name="z")).aggregate_id
        pod = run(
            CreatePod(zone_id=self.zone, name="p", gateway="10.0.0.1", cidr="10.0.0.0/24")
        ).aggregate_id
        cluster = run(CreateCluster(zone_id=self.zone, pod_id=pod, name="c")).aggregate_id
        self.hosts = [
            run(
                RegisterHost(
                    zone_id=self.zone,
                    pod_id=pod,
                    cluster_id=cluster,
                    name=f"h{i}",
                    cpu_cores=cpu_cores,
                    ram_mb=ram_mb,
                    libvirt_uri=uri,
                )
            ).aggregate_id
            for i in range(hosts)
        ]
        self.host = self.hosts[0]
        self.pool = run(
            CreateStoragePool(
                zone_id=self.zone,
                cluster_id=cluster,
                name="primary",
                scope="cluster",
                capacity_bytes=8 * GiB,
                url=str(tmp / "primary"),
            )
        ).aggregate_id
        run(
            CreateImageStore(
                zone_id=self.zone, name="secondary", url=str(tmp / "secondary"), protocol="file"
            )
        )
        _, digest = make_template_image(served.root, "tiny.qcow2")
        self.template = run(
            RegisterTemplate(
                name="tiny",
                zone_id=self.zone,
                url=f"{served.base_url}/tiny.qcow2",
                format="qcow2",
                size_bytes=4 * 1024 * 1024,
                os_type="None",
                checksum=f"sha256:{digest}",
            )
        ).aggregate_id
        self.networks: list[uuid.UUID] = [
            run(
                CreateNetwork(
                    account="acme",
                    name=f"net-{i}",
                    zone_id=self.zone,
                    cidr=f"10.{50 + i}.0.0/24",
                    isolation="none",
                )
            ).aggregate_id
            for i in range(2)
        ]


async def orchestrated_fabric(
    pipeline: Pipeline,
    service: CommandService,
    store: EventStore,
    uri: str,
    tmp: Path,
    served: Served,
    names: Names,
    **fabric: int,
) -> Fabric:
    """The whole in-process pipeline (relay, projections, recorder, operation
    manager, effector) on a Fabric whose template is downloaded and Ready."""
    pipeline.start_engine_side()
    pipeline.start_recorder(service)
    pipeline.start_manager(service, store)
    pipeline.start_effector(names)
    made = await asyncio.to_thread(Fabric, service, uri, tmp, served, **fabric)
    await service.execute_async(RequestTemplateDownload(template_id=made.template))
    await wait_for(
        "template Ready",
        lambda: getattr(store.load(made.template), "state", "") == "Ready",
        pipeline,
    )
    return made
