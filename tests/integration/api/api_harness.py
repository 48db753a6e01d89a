"""The API served for real over loopback HTTP, for the tests in this folder.

uvicorn runs as a task of the test's event loop on a free port; requests go
through http.client in a worker thread (a real socket, the real server),
so nothing is faked between the client and the app.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_engine.api import tokens
from cloud_engine.api.app import create_app
from cloud_engine.api.live import LiveConfig
from cloud_engine.api.server import ApiServer
from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.effectors.naming import Names
from cloud_engine.effectors.service import EffectorService, effector_config
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.infra.pg import connect
from cloud_engine.orchestration.manager import OperationManager, manager_config
from cloud_engine.orchestration.recorder import ResultRecorder
from cloud_engine.projections.replay import Rebuild
from cloud_engine.projections.worker import ProjectionWorker, consumer_config
from tests import fabric

PROBLEM = "application/problem+json"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass
class Api:
    server: ApiServer
    target: DatabaseTarget
    service: CommandService
    store: EventStore
    admin: str = ""
    alice: str = ""
    bob: str = ""
    requests: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        self.requests.append(f"{method} {path}")
        return await asyncio.to_thread(self._send, method, path, payload, sent)

    def _send(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    async def post(
        self, path: str, body: Any = None, *, token: str | None = None, key: str | None = None
    ) -> Reply:
        headers = {} if key is None else {"Idempotency-Key": key}
        return await self.call("POST", path, token=token or self.admin, body=body,
                               headers=headers)  # fmt: skip

    async def get(self, path: str, *, token: str | None = None) -> Reply:
        return await self.call("GET", path, token=token or self.admin)

    async def token(self, role: str, account: str) -> str:
        conn = await connect(self.target)
        try:
            secret, _ = await tokens.create(conn, self.target.schema, role, account)  # type: ignore[arg-type]
        finally:
            await conn.close()
        return secret

    async def project(self) -> None:
        """Bring the read models up to the log (as the projection worker would)."""
        await Rebuild(self.target, processes=1).run()


async def start_api(
    target: DatabaseTarget,
    service: CommandService,
    store: EventStore,
    live: LiveConfig | None = None,
) -> tuple[Api, asyncio.Event, asyncio.Task[None]]:
    server = ApiServer(create_app(service, store, target, live=live), "127.0.0.1", 0)
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    deadline = time.monotonic() + 60
    while not server.started:
        if task.done():
            task.result()  # raises the reason it did not start
        assert time.monotonic() < deadline, "API did not start"
        await asyncio.sleep(0.05)
    api = Api(server, target, service, store)
    api.admin = await api.token("admin", "ops")
    api.alice = await api.token("user", "alice")
    api.bob = await api.token("user", "bob")
    return api, stop, task


# A fabric to deploy on -----------------------------------------------------------

Fabric = fabric.Fabric[str]


async def created(reply: Reply) -> str:
    assert reply.status == 202, (reply.status, reply.body)
    return str(reply.json()["resource_id"])


async def make_fabric(
    api: Api,
    *,
    libvirt_uri: str = "test:///default",
    hosts: int = 1,
    pool_url: str = "file:///var/lib/cloud-engine/pool",
) -> Fabric:
    """Over HTTP as the admin: zone, pod, cluster, hosts, a cluster pool, a
    VXLAN physical network and a template, Ready as if the effector had
    downloaded it."""
    spec = fabric.FabricSpec(
        zone="z1",
        pod="p1",
        cluster="c1",
        hosts=fabric.hosts(hosts, libvirt_uri, cpu_cores=16, ram_mb=32768),
        pools=(fabric.PoolSpec(url=pool_url),),
        physical_networks=(fabric.PhysicalNetworkSpec(),),
        templates=(fabric.TemplateSpec(size_bytes=64 << 20, os_type="linux"),),
    )
    return await fabric.build_http(api, spec, admin=api.admin, effector=api.service)


def vm_body(fabric: Fabric, name: str = "vm", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "zone_id": fabric.zone,
        "template_id": fabric.template,
        "spec": {"cpus": 1, "ram_mb": 256, "root_disk_gb": 1},
        **extra,
    }


def new_key() -> str:
    return uuid.uuid4().hex


# The whole pipeline in-process -----------------------------------------------------

PIPELINE_WAIT_S = 90.0


@asynccontextmanager
async def pipeline_tasks(
    api: Api, broker: str, topic_prefix: str, label: str
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Relay, projection worker, operation manager, result recorder and an
    effector (libvirt's test driver; its names start ce-<label>) as tasks of
    this event loop, behind the API's command service."""
    target, service, store = api.target, api.service, api.store
    stop = asyncio.Event()
    parts: list[Any] = [  # each with run(stop)
        Relay(target, RelayConfig(bootstrap=broker, topic_prefix=topic_prefix, partitions=2)),
        ProjectionWorker(target, consumer_config(broker, topic_prefix)),
        OperationManager(
            service, store, target, manager_config(broker, topic_prefix), sweep_interval_s=2.0
        ),
        ResultRecorder(service, broker, topic_prefix),
        EffectorService(
            target,
            effector_config(broker, topic_prefix),
            names=Names(prefix=f"ce-{label}{uuid.uuid4().hex[:6]}-"),
            name=f"effector@{label}-test",
            stop_timeout_s=5.0,
        ),
    ]
    tasks = [asyncio.create_task(p.run(stop)) for p in parts]
    try:
        yield tasks
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


async def until(
    what: str, tasks: list[asyncio.Task[None]], probe: Callable[[], Awaitable[Any]]
) -> Any:
    """probe's first true answer; a failed pipeline task fails the wait."""
    deadline = time.monotonic() + PIPELINE_WAIT_S
    while True:
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise AssertionError(f"a pipeline task failed: {task.exception()!r}")
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def deploy_spec(url: str, sha256: str, tmp_path: Path) -> fabric.FabricSpec:
    """Two hosts, a pool and an image store under tmp_path, and the template
    at url still to be downloaded (the pipeline's effector fetches it)."""
    return fabric.FabricSpec(
        hosts=fabric.hosts(2, cpu_cores=8, ram_mb=8192),
        pools=(fabric.PoolSpec(url=str(tmp_path / "primary"), capacity_bytes=64 << 30),),
        image_stores=(fabric.ImageStoreSpec(url=str(tmp_path / "secondary")),),
        templates=(
            fabric.TemplateSpec(
                url=url,
                size_bytes=4 << 20,
                os_type="linux",
                checksum=f"sha256:{sha256}",
                state="requested",
            ),
        ),
    )
