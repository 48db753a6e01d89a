import inspect
from uuid import uuid4

import msgspec
import pytest

from cloud_engine.engine.commands import fabric
from cloud_engine.engine.commands.base import HANDLERS, Command, Outcome, dispatch
from cloud_engine.engine.commands.fabric import (
    AllocateTag,
    CreateCluster,
    CreateImageStore,
    CreatePhysicalNetwork,
    CreatePod,
    CreateStoragePool,
    CreateZone,
    DeclareHostDown,
    DeclareHostUp,
    DisableCluster,
    DisableHost,
    DisableImageStore,
    DisablePhysicalNetwork,
    DisablePod,
    DisableStoragePool,
    EnableCluster,
    EnableHost,
    EnableImageStore,
    EnablePhysicalNetwork,
    EnablePod,
    EnableStoragePool,
    EnterHostMaintenance,
    EnterStoragePoolMaintenance,
    ExitHostMaintenance,
    ExitStoragePoolMaintenance,
    RegisterHost,
    ReleaseHostCapacity,
    ReleaseStorage,
    ReleaseTag,
    ReserveHostCapacity,
    ReserveStorage,
    UpdateHostOvercommit,
)
from cloud_engine.engine.errors import CapacityExceeded, Conflict, NotFound, Validation
from cloud_engine.engine.fabric.cluster import Cluster
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.image_store import ImageStore
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork, TagRange
from cloud_engine.engine.fabric.pod import Pod
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from tests.unit.support import assert_command_refused


class Fabric:
    """A zone with one of everything, built through the handlers."""

    def __init__(self):
        self.uow = InMemoryUnitOfWork()
        self.zone_id = self.run(CreateZone(name="zone-1")).aggregate_id
        self.pod_id = self.run(
            CreatePod(zone_id=self.zone_id, name="pod-1", gateway="10.0.0.1", cidr="10.0.0.0/24")
        ).aggregate_id
        self.cluster_id = self.run(
            CreateCluster(zone_id=self.zone_id, pod_id=self.pod_id, name="cluster-1")
        ).aggregate_id
        self.host_id = self.run(self.register_host()).aggregate_id
        self.pool_id = self.run(
            CreateStoragePool(
                zone_id=self.zone_id,
                cluster_id=self.cluster_id,
                name="primary-1",
                scope="cluster",
                capacity_bytes=1000,
                url="/var/lib/cloud-engine/pool1",
            )
        ).aggregate_id
        self.store_id = self.run(
            CreateImageStore(
                zone_id=self.zone_id, name="secondary", url="nfs://filer/export", protocol="nfs"
            )
        ).aggregate_id
        self.network_id = self.run(
            CreatePhysicalNetwork(
                zone_id=self.zone_id, name="guest", isolation="VLAN", tag_range=TagRange(10, 11)
            )
        ).aggregate_id

    def register_host(self, **overrides):
        values = {
            "zone_id": self.zone_id,
            "pod_id": self.pod_id,
            "cluster_id": self.cluster_id,
            "name": "kvm-01",
            "cpu_cores": 4,
            "ram_mb": 4096,
            "cpu_overcommit": 2.0,
            "libvirt_uri": "qemu:///system",
        }
        values.update(overrides)
        return RegisterHost(**values)

    def run(self, command):
        outcome = dispatch(self.uow, command)
        assert isinstance(outcome, Outcome)
        return outcome

    def get(self, cls, aggregate_id):
        return self.uow.get(cls, aggregate_id)


@pytest.fixture
def fab():
    fab = Fabric()
    fab.uow.commit()
    return fab


def test_every_fabric_command_has_a_handler():
    commands = [
        c
        for _, c in inspect.getmembers(fabric, inspect.isclass)
        if issubclass(c, Command) and c is not Command
    ]
    assert len(commands) == 34
    assert all(c in HANDLERS for c in commands)


def test_fabric_tree_is_built_and_linked(fab):
    host = fab.get(Host, fab.host_id)
    assert (host.zone_id, host.pod_id, host.cluster_id) == (fab.zone_id, fab.pod_id, fab.cluster_id)
    assert fab.get(Cluster, fab.cluster_id).pod_id == fab.pod_id
    assert fab.get(Pod, fab.pod_id).zone_id == fab.zone_id
    assert fab.get(StoragePool, fab.pool_id).cluster_id == fab.cluster_id
    assert fab.get(ImageStore, fab.store_id).protocol == "nfs"
    assert fab.get(PhysicalNetwork, fab.network_id).tag_range == TagRange(10, 11)


def test_creation_commands_use_a_given_id(fab):
    chosen = [uuid4() for _ in range(7)]
    zone_id = fab.run(CreateZone(name="z2", network_type="Basic", id=chosen[0])).aggregate_id
    commands = [
        CreatePod(zone_id=zone_id, name="p", gateway="10.5.0.1", cidr="10.5.0.0/16", id=chosen[1]),
        CreateCluster(zone_id=zone_id, pod_id=chosen[1], name="c", id=chosen[2]),
        RegisterHost(
            zone_id=zone_id,
            pod_id=chosen[1],
            cluster_id=chosen[2],
            name="h",
            cpu_cores=1,
            ram_mb=1,
            libvirt_uri="test:///default",
            id=chosen[3],
        ),
        CreateStoragePool(
            zone_id=zone_id, name="s", scope="zone", capacity_bytes=1, url="/p", id=chosen[4]
        ),
        CreateImageStore(zone_id=zone_id, name="i", url="/i", protocol="file", id=chosen[5]),
        CreatePhysicalNetwork(zone_id=zone_id, name="n", isolation="none", id=chosen[6]),
    ]
    ids = [zone_id] + [fab.run(c).aggregate_id for c in commands]
    assert ids == chosen
    assert fab.get(Zone, zone_id).network_type == "Basic"
    assert set(chosen) <= set(fab.uow.aggregates)


# Parents ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda f, x: CreatePod(zone_id=x, name="p", gateway="10.1.0.1", cidr="10.1.0.0/24"),
        lambda f, x: CreateCluster(zone_id=x, pod_id=f.pod_id, name="c"),
        lambda f, x: CreateCluster(zone_id=f.zone_id, pod_id=x, name="c"),
        lambda f, x: f.register_host(cluster_id=x),
        lambda f, x: CreateStoragePool(
            zone_id=x, name="s", scope="zone", capacity_bytes=1, url="/p"
        ),
        lambda f, x: CreateStoragePool(
            zone_id=f.zone_id, cluster_id=x, name="s", scope="cluster", capacity_bytes=1, url="/p"
        ),
        lambda f, x: CreateImageStore(zone_id=x, name="i", url="/i", protocol="file"),
        lambda f, x: CreatePhysicalNetwork(zone_id=x, name="n", isolation="none"),
    ],
)
@pytest.mark.parametrize("missing", ["unknown", "wrong-type"])
def test_creation_refused_when_parent_is_missing(fab, make, missing):
    # An id of another aggregate type does not count as the parent either.
    parent_id = uuid4() if missing == "unknown" else fab.store_id
    assert_command_refused(fab.uow, NotFound, make(fab, parent_id))


def test_cluster_refused_for_a_pod_of_another_zone(fab):
    other_zone = fab.run(CreateZone(name="zone-2")).aggregate_id
    fab.uow.commit()
    command = CreateCluster(zone_id=other_zone, pod_id=fab.pod_id, name="c")
    assert assert_command_refused(fab.uow, Validation, command).field == "pod_id"


@pytest.mark.parametrize("wrong", ["pod_id", "zone_id"])
def test_host_refused_for_a_cluster_elsewhere(fab, wrong):
    other_zone = fab.run(CreateZone(name="zone-2")).aggregate_id
    other_pod = fab.run(
        CreatePod(zone_id=other_zone, name="p", gateway="10.1.0.1", cidr="10.1.0.0/24")
    ).aggregate_id
    fab.uow.commit()
    command = fab.register_host(**{wrong: other_pod if wrong == "pod_id" else other_zone})
    assert assert_command_refused(fab.uow, Validation, command).field == "cluster_id"


def test_pool_refused_for_a_cluster_of_another_zone(fab):
    other_zone = fab.run(CreateZone(name="zone-2")).aggregate_id
    fab.uow.commit()
    command = CreateStoragePool(
        zone_id=other_zone,
        cluster_id=fab.cluster_id,
        name="s",
        scope="cluster",
        capacity_bytes=1,
        url="/p",
    )
    assert assert_command_refused(fab.uow, Validation, command).field == "cluster_id"


def test_aggregate_validation_still_applies_to_undecoded_commands(fab):
    assert (
        assert_command_refused(fab.uow, Validation, fab.register_host(cpu_cores=0)).field
        == "cpu_cores"
    )


# Transitions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("commands", "cls", "attr", "state"),
    [
        ([DisablePod, EnablePod], Pod, "pod_id", "Enabled"),
        ([DisableCluster], Cluster, "cluster_id", "Disabled"),
        ([DisableCluster, EnableCluster], Cluster, "cluster_id", "Enabled"),
        ([DisableHost], Host, "host_id", "Disabled"),
        ([DisableHost, EnableHost], Host, "host_id", "Enabled"),
        ([EnterHostMaintenance], Host, "host_id", "Maintenance"),
        ([EnterHostMaintenance, ExitHostMaintenance], Host, "host_id", "Enabled"),
        ([DeclareHostDown], Host, "host_id", "Down"),
        ([DeclareHostDown, DeclareHostUp], Host, "host_id", "Enabled"),
        ([DisableStoragePool, EnableStoragePool], StoragePool, "pool_id", "Enabled"),
        ([EnterStoragePoolMaintenance], StoragePool, "pool_id", "Maintenance"),
        (
            [EnterStoragePoolMaintenance, ExitStoragePoolMaintenance],
            StoragePool,
            "pool_id",
            "Enabled",
        ),
        ([DisableImageStore, EnableImageStore], ImageStore, "store_id", "Enabled"),
        (
            [DisablePhysicalNetwork, EnablePhysicalNetwork],
            PhysicalNetwork,
            "network_id",
            "Enabled",
        ),
    ],
)
def test_transition_commands(fab, commands, cls, attr, state):
    aggregate_id = getattr(fab, attr)
    field = {"store_id": "image_store_id", "network_id": "physical_network_id"}.get(attr, attr)
    for command in commands:
        assert fab.run(command(**{field: aggregate_id})).aggregate_id == aggregate_id
    assert fab.get(cls, aggregate_id).state == state
    assert len(fab.uow.commit()) == len(commands)


def test_transition_command_for_unknown_aggregate(fab):
    assert_command_refused(fab.uow, NotFound, DisableHost(host_id=fab.pod_id))


# Capacity and tags ------------------------------------------------------------------


def test_host_capacity_commands(fab):
    vm = uuid4()
    fab.run(ReserveHostCapacity(host_id=fab.host_id, vm_id=vm, cpus=8, ram_mb=4096))
    host = fab.get(Host, fab.host_id)
    assert (host.cpus_free, host.ram_free_mb) == (0.0, 0)
    command = ReserveHostCapacity(host_id=fab.host_id, vm_id=uuid4(), cpus=1, ram_mb=1)
    assert_command_refused(fab.uow, CapacityExceeded, command)
    assert_command_refused(
        fab.uow,
        CapacityExceeded,
        UpdateHostOvercommit(host_id=fab.host_id, cpu_overcommit=1.0, ram_overcommit=1.0),
    )
    fab.run(UpdateHostOvercommit(host_id=fab.host_id, cpu_overcommit=3.0, ram_overcommit=1.0))
    assert host.cpus_free == 4.0
    fab.run(ReleaseHostCapacity(host_id=fab.host_id, vm_id=vm))
    assert host.cpus_used == 0
    assert_command_refused(fab.uow, Conflict, ReleaseHostCapacity(host_id=fab.host_id, vm_id=vm))


def test_storage_commands(fab):
    volume = uuid4()
    outcome = fab.run(ReserveStorage(pool_id=fab.pool_id, volume_id=volume, size_bytes=1000))
    assert outcome.aggregate_id == fab.pool_id
    assert fab.get(StoragePool, fab.pool_id).free_bytes == 0
    command = ReserveStorage(pool_id=fab.pool_id, volume_id=uuid4(), size_bytes=1)
    assert_command_refused(fab.uow, CapacityExceeded, command)
    fab.run(ReleaseStorage(pool_id=fab.pool_id, volume_id=volume))
    assert fab.get(StoragePool, fab.pool_id).free_bytes == 1000
    assert_command_refused(fab.uow, Conflict, ReleaseStorage(pool_id=fab.pool_id, volume_id=volume))


def test_tag_commands_return_the_tag(fab):
    owners = [uuid4(), uuid4()]
    outcomes = [
        fab.run(AllocateTag(physical_network_id=fab.network_id, owner_id=o)) for o in owners
    ]
    assert [o.value for o in outcomes] == [10, 11]
    assert {o.aggregate_id for o in outcomes} == {fab.network_id}
    assert_command_refused(
        fab.uow, CapacityExceeded, AllocateTag(physical_network_id=fab.network_id, owner_id=uuid4())
    )
    release = ReleaseTag(physical_network_id=fab.network_id, tag=10, owner_id=owners[0])
    assert fab.run(release).value is None
    reused = fab.run(AllocateTag(physical_network_id=fab.network_id, owner_id=uuid4()))
    assert reused.value == 10
    assert_command_refused(fab.uow, Conflict, release)


# Wire format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command_type", "payload"),
    [
        (
            ReserveHostCapacity,
            {"host_id": str(uuid4()), "vm_id": str(uuid4()), "cpus": 0, "ram_mb": 1},
        ),
        (
            UpdateHostOvercommit,
            {"host_id": str(uuid4()), "cpu_overcommit": 0.5, "ram_overcommit": 1},
        ),
        (ReserveStorage, {"pool_id": str(uuid4()), "volume_id": str(uuid4()), "size_bytes": -1}),
        (CreateZone, {"name": ""}),
        (CreateZone, {"name": "z", "surprise": 1}),
        (CreateImageStore, {"zone_id": str(uuid4()), "name": "i", "url": "/i", "protocol": "ftp"}),
        (CreatePhysicalNetwork, {"zone_id": str(uuid4()), "name": "n", "isolation": "GRE"}),
    ],
)
def test_decoding_rejects_out_of_range_fields(command_type, payload):
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(payload), type=command_type)


def test_decoding_a_full_command():
    payload = {
        "zone_id": str(uuid4()),
        "name": "guest",
        "isolation": "VXLAN",
        "tag_range": {"first": 5000, "last": 6000},
    }
    command = msgspec.json.decode(msgspec.json.encode(payload), type=CreatePhysicalNetwork)
    assert command.tag_range == TagRange(5000, 6000)
    assert command.id is None


def test_every_event_round_trips_through_the_mapper():
    fab = Fabric()
    vm, volume, owner = uuid4(), uuid4(), uuid4()
    for command in [
        ReserveHostCapacity(host_id=fab.host_id, vm_id=vm, cpus=2, ram_mb=512),
        UpdateHostOvercommit(host_id=fab.host_id, cpu_overcommit=1.5, ram_overcommit=1.25),
        ReleaseHostCapacity(host_id=fab.host_id, vm_id=vm),
        EnterHostMaintenance(host_id=fab.host_id),
        DeclareHostDown(host_id=fab.host_id),
        ReserveStorage(pool_id=fab.pool_id, volume_id=volume, size_bytes=10),
        ReleaseStorage(pool_id=fab.pool_id, volume_id=volume),
        AllocateTag(physical_network_id=fab.network_id, owner_id=owner),
        ReleaseTag(physical_network_id=fab.network_id, tag=10, owner_id=owner),
        DisablePhysicalNetwork(physical_network_id=fab.network_id),
    ]:
        fab.run(command)
    mapper = MsgspecMapper()
    events = fab.uow.commit()
    assert len(events) == 17
    for event in events:
        decoded = mapper.to_domain_event(mapper.to_stored_event(event))
        assert type(decoded) is type(event)
        assert vars(decoded) == vars(event)
