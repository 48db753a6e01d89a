"""Host-scoped (local) storage pools and hosts' underlays: a local pool is
reached by its host only, the planner keeps VMs whose disks are there on
that host, a running VM on one is not live-migrated (a stopped one
migrates offline, its disks moved), and a host registers the underlay its
peers reach it at (older records without one decode)."""

from uuid import UUID, uuid4

import msgspec
import pytest

from cloud_engine.engine.commands.hosts import RegisterHost
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    PlaceOperation,
    VmOperation,
    VolumeOperation,
)
from cloud_engine.engine.commands.storage import CreateVolume
from cloud_engine.engine.commands.storage_fabric import CreateStoragePool
from cloud_engine.engine.errors import Conflict, Validation
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.planning import VolumeRequest
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume
from tests.unit.operation_world import GIB, World
from tests.unit.test_planner import ask, host, placed, pool, refused, run


def local(n: int, on_host: int, **overrides) -> object:
    return msgspec.structs.replace(pool(n, **overrides), host_id=UUID(int=on_host))


# The pool aggregate ----------------------------------------------------------------


def new_pool(**overrides) -> StoragePool:
    values = {
        "zone_id": uuid4(),
        "name": "local-1",
        "scope": "host",
        "capacity_bytes": 10 * GIB,
        "url": "/var/lib/cloud-engine/local",
        "cluster_id": uuid4(),
        "host_id": uuid4(),
    }
    values.update(overrides)
    return StoragePool.create(**values)


def test_a_host_scoped_pool_names_its_host_and_cluster():
    made = new_pool()
    assert made.scope == "host" and made.host_id is not None and made.cluster_id is not None
    with pytest.raises(Validation, match="needs a host_id"):
        new_pool(host_id=None)
    with pytest.raises(Validation, match="needs a cluster_id"):
        new_pool(cluster_id=None)
    with pytest.raises(Validation, match="a cluster-scoped pool takes no host_id"):
        new_pool(scope="cluster")


def test_creating_a_local_pool_takes_the_hosts_cluster(world: World):
    pool_id = world.run(
        CreateStoragePool(
            zone_id=world.zone,
            name="local",
            scope="host",
            capacity_bytes=10 * GIB,
            url="/var/lib/local",
            host_id=world.host,
        )
    )
    made = world.get(StoragePool, pool_id)
    assert (made.host_id, made.cluster_id) == (world.host, world.cluster)
    with pytest.raises(Validation, match="is not in cluster"):
        world.run(
            CreateStoragePool(
                zone_id=world.zone,
                name="local-2",
                scope="host",
                capacity_bytes=GIB,
                url="/var/lib/local2",
                host_id=world.host,
                cluster_id=uuid4(),
            )
        )


# The planner -----------------------------------------------------------------------


def test_a_local_pool_serves_its_host_only():
    hosts = [host(1), host(2)]
    # Only host 2 has room, on its own disk; host 1 does not reach it.
    pools = [pool(1, total=5 * GIB), local(2, on_host=2)]
    placed(run(hosts, pools=pools), 2, [2])
    placed(run(hosts, pools=pools, strategy="dispersing"), 2, [2])
    result = refused(run(hosts[:1], pools=pools))
    assert "no pool has room for the root volume" in result.message
    named = refused(run(hosts, ask(required_host_id=UUID(int=1)), pools=pools))
    assert named.eliminations[0].constraint == "storage"


def test_volumes_spread_over_shared_and_local_pools():
    hosts = [host(1)]
    pools = [pool(1, total=12 * GIB), local(2, on_host=1, total=12 * GIB)]
    two = ask(data_volumes=(VolumeRequest(size_bytes=10 * GIB),))
    placed(run(hosts, two, pools=pools), 1, [1, 2])


# Operations ------------------------------------------------------------------------


def local_pool(world: World) -> UUID:
    return world.run(
        CreateStoragePool(
            zone_id=world.zone,
            name="local",
            scope="host",
            capacity_bytes=100 * GIB,
            url="/var/lib/local",
            host_id=world.host,
        )
    )


def test_a_running_vm_on_local_disks_is_not_live_migrated(world: World):
    shared = world.pool
    world.pool = local_pool(world)
    _, vm_id = world.running_vm(network_ids=(), data_disks_gb=())
    world.pool = shared
    world.add_host("h2")
    with pytest.raises(Conflict, match=r"local pool .* migrates only on shared storage"):
        world.run(VmOperation(kind="vm.migrate", vm_id=vm_id))


def test_a_local_volume_attaches_only_to_a_vm_on_that_host(world: World):
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    volume_id = world.run(
        CreateVolume(account="acme", name="data", zone_id=world.zone, size_bytes=GIB)
    )
    volume = world.get(Volume, volume_id)
    volume.create_requested(local_pool(world), world.host)
    volume.created()
    with pytest.raises(Validation, match="local pool"):
        world.run(VolumeOperation(kind="volume.attach", volume_id=volume_id, vm_id=vm_id))


# Hosts' underlays ------------------------------------------------------------------


def register(world: World, **underlay) -> RegisterHost:
    return RegisterHost(
        zone_id=world.zone,
        pod_id=world.pod,
        cluster_id=world.cluster,
        name="h9",
        cpu_cores=4,
        ram_mb=4096,
        libvirt_uri="qemu+ssh://h9/system",
        **underlay,
    )


def test_a_host_registers_its_underlay(world: World):
    host_id = world.run(register(world, underlay_address="10.9.0.9", underlay_device="eth1"))
    made = world.get(Host, host_id)
    assert (made.underlay_address, made.underlay_device) == ("10.9.0.9", "eth1")
    with pytest.raises(Validation, match="go together"):
        world.run(register(world, underlay_address="10.9.0.9"))
    with pytest.raises(Validation, match="IPv4"):
        world.run(register(world, underlay_address="h9", underlay_device="eth1"))
    with pytest.raises(Validation, match="interface name"):
        world.run(register(world, underlay_address="10.9.0.9", underlay_device="x" * 16))


def test_a_host_recorded_before_underlays_decodes_without_one():
    made = Host.create(
        zone_id=uuid4(),
        pod_id=uuid4(),
        cluster_id=uuid4(),
        name="old",
        cpu_cores=2,
        ram_mb=1024,
        libvirt_uri="qemu:///system",
    )
    mapper = MsgspecMapper()
    stored = mapper.to_stored_event(made.collect_events()[0])
    state = msgspec.json.decode(stored.state)
    del state["underlay_address"], state["underlay_device"]
    old = mapper.decode(stored.originator_id, 1, stored.topic, msgspec.json.encode(state))
    assert stored.topic == "engine.fabric.host:Host.Created"
    assert old.underlay_address is None and old.underlay_device is None  # type: ignore[attr-defined]


# Offline migration -----------------------------------------------------------------


def local_pool_on(world: World, host_id: UUID, name: str) -> UUID:
    return world.run(
        CreateStoragePool(
            zone_id=world.zone,
            name=name,
            scope="host",
            capacity_bytes=100 * GIB,
            url=f"/var/lib/{name}",
            host_id=host_id,
        )
    )


def test_a_stopped_vm_migrates_with_its_local_disks(world: World):
    here, there = world.host, world.add_host("h2")
    local = {here: local_pool_on(world, here, "l1"), there: local_pool_on(world, there, "l2")}
    shared, world.pool = world.pool, local[here]
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    world.pool = shared
    vm = world.get(VirtualMachine, vm_id)
    root = world.get(Volume, vm.disks[0])

    op_id = world.run(VmOperation(kind="vm.migrate", vm_id=vm_id))
    op = world.get(Operation, op_id)
    assert (op.params.source_host_id, op.params.volume_ids) == (here, (root.id,))
    with pytest.raises(Validation, match="no pool on host"):  # the one it is on
        world.run(PlaceOperation(operation_id=op_id, host_id=there, pool_ids=(local[here],)))
    world.run(PlaceOperation(operation_id=op_id, host_id=there, pool_ids=(local[there],)))
    # It holds the destination while its disk is copied there.
    assert (vm.state, vm.host_id, vm.migration_target_id) == ("Migrating", there, there)
    assert (root.moving_to, root.moving_host_id) == (local[there], there)
    assert root.id in world.get(StoragePool, local[there]).reservations
    assert vm_id in world.get(Host, there).reservations

    vm.migration_completed()  # the effector copied it
    world.run(AdvanceOperation(operation_id=op_id))
    assert op.status == "succeeded"
    assert (vm.state, vm.host_id, vm.last_host_id, vm.pool_id) == (
        "Stopped", None, there, local[there],
    )  # fmt: skip
    assert (root.pool_id, root.host_id, root.moving_to) == (local[there], there, None)
    assert root.id not in world.get(StoragePool, local[here]).reservations
    assert root.id in world.get(StoragePool, local[there]).reservations
    assert vm_id not in world.get(Host, there).reservations

    # A copy back that fails leaves it where it is, the space given back.
    back = world.run(VmOperation(kind="vm.migrate", vm_id=vm_id, host_id=here))
    world.run(PlaceOperation(operation_id=back, host_id=here, pool_ids=(local[here],)))
    vm.migration_failed("copy failed: disk full")
    world.run(AdvanceOperation(operation_id=back))
    failed = world.get(Operation, back)
    assert (failed.status, failed.error) == ("failed", "copy failed: disk full")
    assert (vm.state, vm.host_id, vm.last_host_id) == ("Stopped", None, there)
    assert (root.pool_id, root.moving_to) == (local[there], None)
    assert root.id not in world.get(StoragePool, local[here]).reservations
    assert world.get(Host, here).reservations == {}


def test_a_stopped_vm_on_shared_disks_migrates_without_moving_them(world: World):
    there = world.add_host("h2")
    _, vm_id = world.stopped_vm(network_ids=(), data_disks_gb=())
    vm = world.get(VirtualMachine, vm_id)
    root = world.get(Volume, vm.disks[0])
    op_id = world.run(VmOperation(kind="vm.migrate", vm_id=vm_id))
    world.run(PlaceOperation(operation_id=op_id, host_id=there, pool_ids=(world.pool,)))
    assert root.moving_to is None
    vm.migration_completed()
    world.run(AdvanceOperation(operation_id=op_id))
    assert (vm.state, vm.last_host_id, root.pool_id) == ("Stopped", there, world.pool)
