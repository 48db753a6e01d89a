"""The live projection worker (Kafka in, read models out) agrees with a rebuild
from the store, under a random workload on the real broker."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import asyncpg
import pytest

from cloud_engine.bus.relay import Relay, RelayConfig
from cloud_engine.engine.commands.hosts import ReleaseHostCapacity, ReserveHostCapacity
from cloud_engine.engine.commands.network import AllocateIp, ReleaseIp
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.infra.database import DatabaseTarget
from cloud_engine.projections.replay import Rebuild
from cloud_engine.projections.worker import ProjectionWorker, consumer_config
from tests.fabric import Fabric, FabricSpec, NetworkSpec, build, hosts
from tests.integration.test_projections import checksum

pytestmark = pytest.mark.postgres


def setup_fabric(service: CommandService) -> Fabric[uuid.UUID]:
    spec = FabricSpec(
        hosts=hosts(3, "qemu:///system", cpu_cores=8, ram_mb=8192),
        networks=(NetworkSpec(name="n", account="a", cidr="10.9.0.0/26"),),
    )
    return build(service, spec)


def random_workload(service: CommandService, rng: random.Random, steps: int) -> None:
    fabric = setup_fabric(service)
    hosts, network = fabric.hosts, fabric.network
    reservations: list[tuple[object, object]] = []
    ips: list[object] = []
    for _ in range(steps):
        action = rng.choice(["reserve", "release", "allocate", "free"])
        try:
            if action == "reserve":
                vm = uuid.uuid4()
                host = rng.choice(hosts)
                service.execute(
                    ReserveHostCapacity(
                        host_id=host,
                        vm_id=vm,
                        cpus=rng.randint(1, 4),
                        ram_mb=rng.choice([512, 1024]),
                    )
                )
                reservations.append((host, vm))
            elif action == "release" and reservations:
                host, vm = reservations.pop(rng.randrange(len(reservations)))
                service.execute(ReleaseHostCapacity(host_id=host, vm_id=vm))
            elif action == "allocate":
                ips.append(service.execute(AllocateIp(network_id=network)).aggregate_id)
            elif action == "free" and ips:
                service.execute(ReleaseIp(ip_id=ips.pop(rng.randrange(len(ips)))))
        except DomainError:
            pass  # refused (full host or network): nothing stored, as designed


@pytest.mark.parametrize("seed", [1, 2])
async def test_live_worker_equals_rebuild_after_random_workload(
    pg_target: DatabaseTarget,
    service: CommandService,
    store: EventStore,
    broker: str,
    topic_prefix: str,
    seed: int,
):
    stop = asyncio.Event()
    relay = Relay(pg_target, RelayConfig(bootstrap=broker, topic_prefix=topic_prefix, partitions=4))
    worker = ProjectionWorker(pg_target, consumer_config(broker, topic_prefix))
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(worker.run(stop))]
    conn = await asyncpg.connect(
        host=pg_target.host, port=pg_target.port, user=pg_target.user, database=pg_target.dbname
    )
    try:
        await asyncio.to_thread(random_workload, service, random.Random(seed), 150)
        total = store.max_position()
        deadline = time.monotonic() + 60
        while True:
            applied = (
                await conn.fetchval(
                    f"SELECT coalesce(sum(version), 0) FROM ("
                    f' SELECT version FROM "{pg_target.schema}".rm_host UNION ALL'
                    f' SELECT version FROM "{pg_target.schema}".rm_network UNION ALL'
                    f' SELECT version FROM "{pg_target.schema}".rm_ip_address UNION ALL'
                    f' SELECT version FROM "{pg_target.schema}".rm_zone UNION ALL'
                    f' SELECT version FROM "{pg_target.schema}".rm_pod UNION ALL'
                    f' SELECT version FROM "{pg_target.schema}".rm_cluster) v'
                )
                if await _tables_exist(conn, pg_target.schema)
                else 0
            )
            if applied == total:
                break
            assert time.monotonic() < deadline, f"worker applied {applied} of {total} events"
            await asyncio.sleep(0.1)
        live = await checksum(conn, pg_target.schema)
        stop.set()
        await asyncio.gather(*tasks)
        await Rebuild(pg_target).run()
        assert await checksum(conn, pg_target.schema) == live
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await conn.close()


async def _tables_exist(conn: asyncpg.Connection, schema: str) -> bool:
    found = await conn.fetchval(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1"
        " AND table_name = 'rm_ip_address'",
        schema,
    )
    return bool(found)
