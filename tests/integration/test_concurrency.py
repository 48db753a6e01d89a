"""Concurrent allocations on real PostgreSQL never hand out the same thing twice.

Several command services (each with its own cache and connection pool, like
separate engine processes) allocate from the same owning aggregate at once;
optimistic concurrency on that aggregate plus bounded retries must give every
caller a distinct address or tag and lose nothing.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator

import pytest

from cloud_engine.engine.commands.fabric import CreatePhysicalNetwork, CreateZone
from cloud_engine.engine.commands.network import AllocateIp, CreateNetwork
from cloud_engine.engine.commands.network_tags import AllocateNetworkTag
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork, TagRange
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network

pytestmark = pytest.mark.postgres

INSTANCES = 4


@pytest.fixture
def services(pg_target) -> Iterator[list[CommandService]]:
    stores = [EventStore(pg_target, pool_size=2) for _ in range(INSTANCES)]
    running = [CommandService(store, max_retries=20) for store in stores]
    yield running
    for service in running:
        service.close()
    for store in stores:
        store.close()


def _in_parallel(services: list[CommandService], commands_per_service: list[list]) -> list:
    """Submit every service's commands from its own thread at the same moment."""
    results: list = []
    lock = threading.Lock()
    start = threading.Barrier(len(services))

    def worker(service: CommandService, commands: list) -> None:
        start.wait()
        futures = [service.submit(command) for command in commands]
        done = [f.result(timeout=120) for f in futures]
        with lock:
            results.extend(done)

    threads = [
        threading.Thread(target=worker, args=(s, c))
        for s, c in zip(services, commands_per_service, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_1000_concurrent_ip_allocations_on_a_slash_22_are_distinct(services, store: EventStore):
    zone = services[0].execute(CreateZone(name="z")).aggregate_id
    network = (
        services[0]
        .execute(
            CreateNetwork(
                account="a", name="n", zone_id=zone, cidr="10.20.0.0/22", isolation="none"
            )
        )
        .aggregate_id
    )
    per_service = [[AllocateIp(network_id=network) for _ in range(250)] for _ in services]

    results = _in_parallel(services, per_service)

    addresses = [r.value for r in results]
    assert len(results) == 1000
    assert len(set(addresses)) == 1000
    cidr = ipaddress.ip_network("10.20.0.0/22")
    assert all(ipaddress.ip_address(a) in cidr for a in addresses)
    assert "10.20.0.1" not in addresses  # the gateway
    loaded = store.load(network)
    assert isinstance(loaded, Network)
    assert len(loaded.allocated) == 1000
    assert sorted(loaded.allocated, key=ipaddress.ip_address) == sorted(
        addresses, key=ipaddress.ip_address
    )
    # Every IP aggregate exists once, with the address its caller was told.
    ips = store.load_many([r.aggregate_id for r in results])
    assert len(ips) == 1000
    assert all(
        isinstance(ips[r.aggregate_id], IpAddress) and ips[r.aggregate_id].address == r.value
        for r in results
    )
    # Exactly one IpAllocated event per caller: retries duplicated nothing.
    allocated_events = [e for e in store.events_of(network) if type(e).__name__ == "IpAllocated"]
    assert len(allocated_events) == 1000


def test_concurrent_tag_allocations_are_distinct(services, store: EventStore):
    first = services[0]
    zone = first.execute(CreateZone(name="z")).aggregate_id
    physical = first.execute(
        CreatePhysicalNetwork(
            zone_id=zone, name="p", isolation="VXLAN", tag_range=TagRange(first=5000, last=5999)
        )
    ).aggregate_id
    networks = [
        first.execute(
            CreateNetwork(
                account="a",
                name=f"n{i}",
                zone_id=zone,
                cidr="10.0.0.0/24",
                isolation="VXLAN",
                physical_network_id=physical,
            )
        ).aggregate_id
        for i in range(200)
    ]
    per_service = [
        [AllocateNetworkTag(network_id=n) for n in networks[i::INSTANCES]] for i in range(INSTANCES)
    ]

    results = _in_parallel(services, per_service)

    tags = [r.value for r in results]
    assert len(set(tags)) == 200
    assert sorted(tags) == list(range(5000, 5200))
    loaded = store.load(physical)
    assert isinstance(loaded, PhysicalNetwork)
    assert {loaded.tag_of(n) for n in networks} == set(tags)
