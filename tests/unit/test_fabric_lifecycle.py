"""The fabric aggregates' Enabled and Disabled events as the log holds them.

Captured from the code before the seven fabric aggregates shared their
lifecycle (engine/fabric/lifecycle.py): each aggregate's Created, Disabled
and Enabled events exactly as MsgspecMapper stored them (the topic column
and the JSON state). The log is never rewritten, so these rows must go on
decoding to the same classes and folding to the same state, and the code
must go on writing new ones under the same topics with the same JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.utils import get_topic

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.fabric.cluster import Cluster
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.image_store import ImageStore
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork, TagRange
from cloud_engine.engine.fabric.pod import Pod
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.metadata import EventMeta, bound_meta

ZONE, POD, CLUSTER = UUID(int=1), UUID(int=2), UUID(int=3)
META = EventMeta(actor="admin", request_id="req-1", correlation_id="cor-1", causation_id="cau-1")

# What wrote the rows below (under META, then disable() and enable()).
WRITERS: dict[str, tuple[UUID, Callable[[UUID], Aggregate]]] = {
    "zone": (UUID(int=101), lambda i: Zone.create("z1", id=i)),
    "pod": (
        UUID(int=102),
        lambda i: Pod.create(zone_id=ZONE, name="p1", gateway="10.1.0.1", cidr="10.1.0.0/24", id=i),
    ),
    "cluster": (UUID(int=103), lambda i: Cluster.create(zone_id=ZONE, pod_id=POD, name="c1", id=i)),
    "host": (
        UUID(int=104),
        lambda i: Host.create(
            zone_id=ZONE,
            pod_id=POD,
            cluster_id=CLUSTER,
            name="h1",
            cpu_cores=4,
            ram_mb=8192,
            libvirt_uri="qemu:///system",
            id=i,
        ),
    ),
    "storage_pool": (
        UUID(int=105),
        lambda i: StoragePool.create(
            zone_id=ZONE,
            name="sp1",
            scope="zone",
            capacity_bytes=1 << 30,
            url="/var/lib/pool1",
            id=i,
        ),
    ),
    "image_store": (
        UUID(int=106),
        lambda i: ImageStore.create(
            zone_id=ZONE, name="is1", url="/var/lib/images", protocol="file", id=i
        ),
    ),
    "physical_network": (
        UUID(int=107),
        lambda i: PhysicalNetwork.create(
            zone_id=ZONE, name="pn1", isolation="VXLAN", tag_range=TagRange(100, 199), id=i
        ),
    ),
}

STORED: dict[str, list[tuple[str, bytes]]] = {
    "zone": [
        (
            "engine.fabric.zone:Zone.Created",
            (
                b'{"timestamp":"2026-12-07T01:23:05.335327Z",'
                b'"originator_topic":"engine.fabric.zone:Zone","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"},'
                b'"name":"z1","description":"","network_type":"Advanced","class_version":2}'
            ),
        ),
        (
            "engine.fabric.zone:Zone.Disabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.335494Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
        (
            "engine.fabric.zone:Zone.Enabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.335571Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
    ],
    "pod": [
        (
            "engine.fabric.pod:Pod.Created",
            (
                b'{"timestamp":"2026-12-07T01:23:05.337448Z",'
                b'"originator_topic":"engine.fabric.pod:Pod","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"},'
                b'"zone_id":"00000000-0000-0000-0000-000000000001","name":"p1",'
                b'"gateway":"10.1.0.1","cidr":"10.1.0.0/24"}'
            ),
        ),
        (
            "engine.fabric.pod:Pod.Disabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.337580Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
        (
            "engine.fabric.pod:Pod.Enabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.337654Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
    ],
    "cluster": [
        (
            "engine.fabric.cluster:Cluster.Created",
            (
                b'{"timestamp":"2026-12-07T01:23:05.338806Z",'
                b'"originator_topic":"engine.fabric.cluster:Cluster","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"},'
                b'"zone_id":"00000000-0000-0000-0000-000000000001",'
                b'"pod_id":"00000000-0000-0000-0000-000000000002","name":"c1",'
                b'"hypervisor":"kvm"}'
            ),
        ),
        (
            "engine.fabric.cluster:Cluster.Disabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.338970Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
        (
            "engine.fabric.cluster:Cluster.Enabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.339057Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
    ],
    "host": [
        (
            "engine.fabric.host:Host.Created",
            (
                b'{"timestamp":"2026-12-07T01:23:05.340641Z",'
                b'"originator_topic":"engine.fabric.host:Host","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"},'
                b'"zone_id":"00000000-0000-0000-0000-000000000001",'
                b'"pod_id":"00000000-0000-0000-0000-000000000002",'
                b'"cluster_id":"00000000-0000-0000-0000-000000000003","name":"h1","cpu_cores":4,'
                b'"cpu_mhz":null,"ram_mb":8192,"cpu_overcommit":1.0,"ram_overcommit":1.0,'
                b'"tags":[],"libvirt_uri":"qemu:///system"}'
            ),
        ),
        (
            "engine.fabric.host:Host.Disabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.340844Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
        (
            "engine.fabric.host:Host.Enabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.340930Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
    ],
    "storage_pool": [
        (
            "engine.fabric.storage_pool:StoragePool.Created",
            (
                b'{"timestamp":"2026-12-07T01:23:05.342240Z",'
                b'"originator_topic":"engine.fabric.storage_pool:StoragePool",'
                b'"meta":{"actor":"admin","request_id":"req-1","correlation_id":"cor-1",'
                b'"causation_id":"cau-1"},"zone_id":"00000000-0000-0000-0000-000000000001",'
                b'"cluster_id":null,"name":"sp1","scope":"zone","capacity_bytes":1073741824,'
                b'"url":"/var/lib/pool1","tags":[],"overcommit":1.0}'
            ),
        ),
        (
            "engine.fabric.storage_pool:StoragePool.Disabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.342377Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
        (
            "engine.fabric.storage_pool:StoragePool.Enabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.342443Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
    ],
    "image_store": [
        (
            "engine.fabric.image_store:ImageStore.Created",
            (
                b'{"timestamp":"2026-12-07T01:23:05.343882Z",'
                b'"originator_topic":"engine.fabric.image_store:ImageStore",'
                b'"meta":{"actor":"admin","request_id":"req-1","correlation_id":"cor-1",'
                b'"causation_id":"cau-1"},"zone_id":"00000000-0000-0000-0000-000000000001",'
                b'"name":"is1","url":"/var/lib/images","protocol":"file"}'
            ),
        ),
        (
            "engine.fabric.image_store:ImageStore.Disabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.344003Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
        (
            "engine.fabric.image_store:ImageStore.Enabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.344069Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
    ],
    "physical_network": [
        (
            "engine.fabric.physical_network:PhysicalNetwork.Created",
            (
                b'{"timestamp":"2026-12-07T01:23:05.345052Z",'
                b'"originator_topic":"engine.fabric.physical_network:PhysicalNetwork",'
                b'"meta":{"actor":"admin","request_id":"req-1","correlation_id":"cor-1",'
                b'"causation_id":"cau-1"},"zone_id":"00000000-0000-0000-0000-000000000001",'
                b'"name":"pn1","isolation":"VXLAN","tag_range":{"first":100,"last":199}}'
            ),
        ),
        (
            "engine.fabric.physical_network:PhysicalNetwork.Disabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.345158Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
        (
            "engine.fabric.physical_network:PhysicalNetwork.Enabled",
            (
                b'{"timestamp":"2026-12-07T01:23:05.345221Z","meta":{"actor":"admin",'
                b'"request_id":"req-1","correlation_id":"cor-1","causation_id":"cau-1"}}'
            ),
        ),
    ],
}

mapper = MsgspecMapper()
_TIMESTAMP = re.compile(rb'"timestamp":"[^"]*"')


@pytest.mark.parametrize("name", STORED)
def test_stored_lifecycle_events_fold_as_before(name: str) -> None:
    aggregate_id, _ = WRITERS[name]
    aggregate: Any = None
    states = []
    for version, (topic, state) in enumerate(STORED[name], start=1):
        event = mapper.decode(aggregate_id, version, topic, state)
        assert get_topic(type(event)) == topic
        aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
        states.append(aggregate.state)
    assert (aggregate.id, aggregate.version) == (aggregate_id, 3)
    assert states == ["Enabled", "Disabled", "Enabled"]
    # Folded, it is the aggregate it was: the lifecycle goes on from there.
    aggregate.disable()
    assert aggregate.state == "Disabled"


@pytest.mark.parametrize("name", STORED)
def test_lifecycle_events_are_written_as_before(name: str) -> None:
    aggregate_id, write = WRITERS[name]
    with bound_meta(META):
        aggregate = write(aggregate_id)
        aggregate.disable()  # type: ignore[attr-defined]
        aggregate.enable()  # type: ignore[attr-defined]
    written = [mapper.to_stored_event(e) for e in aggregate.collect_events()]
    assert [s.topic for s in written] == [topic for topic, _ in STORED[name]]
    # Disabled and Enabled: the same bytes but for the time they were
    # written at. (Created may gain optional fields; the fold above checks
    # the old ones still load.)
    assert [_TIMESTAMP.sub(b"", s.state) for s in written[1:]] == [
        _TIMESTAMP.sub(b"", state) for _, state in STORED[name][1:]
    ]
