"""The engine on three lab hosts (each its own libvirtd): deploys land where
the planner chose and only there, each host's reconciler sees only its own
domains, a running VM live-migrates for real (capacity follows), a
migration the destination refuses leaves the VM running on its source with
the record saying so, a stopped VM on a host's local disk migrates offline
(the disk copied to the destination's local pool), and `lab down` under
running VMs leaves nothing."""

from __future__ import annotations

import libvirt
import pytest

from cloud_engine.effectors.desired import ReadModels
from cloud_engine.effectors.executor import Executor
from cloud_engine.effectors.reconciler import Reconciler
from cloud_engine.engine.commands.operations import VmOperation
from cloud_engine.engine.commands.storage_fabric import DisableStoragePool
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.infra.pg import create_pool
from cloud_engine.lab import Lab, LabHost
from tests.integration.effectors.template_server import qemu_io
from tests.integration.lab.lab_cloud import (
    NAMES,
    Cloud,
    dhcp_known,
    domain_states,
    domain_uuids,
    lab_cloud,
    nic_mac,
    reserved_on,
    running_on,
)
from tests.integration.lab.lab_helpers import leftovers, pids_with, qemu_pids

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]


async def test_dispersed_vms_run_each_on_its_own_libvirtd(
    cloud: Cloud, hosts: list[LabHost], pg_target
):
    vms = [await cloud.deploy(f"web-{i}") for i in range(3)]

    placed = {vm_id: cloud.where(vm_id) for vm_id in vms}
    assert sorted(placed.values()) == ["h1", "h2", "h3"]
    for vm_id, name in placed.items():
        assert running_on(hosts, vm_id) == [name]
        assert domain_states(hosts, vm_id).keys() == {name}  # defined nowhere else
        assert reserved_on(cloud.store, cloud.fabric, vm_id) == [name]
        # Its root disk is in the shared pool, which every host sees.
        root = cloud.store.load(cloud.vm(vm_id).disks[0])
        assert isinstance(root, Volume) and root.pool_id == cloud.fabric.shared_pool
    for lab_host in hosts:
        mine = {vm_id for vm_id, name in placed.items() if name == lab_host.name}
        assert domain_uuids(lab_host) == mine

    # Each host's reconciler sees its own domains only: nothing unknown,
    # nothing missing, on any of them.
    pool = await create_pool(pg_target, max_size=2)
    executor = Executor("reconciler@test", names=NAMES)
    reported = []

    async def publish(result) -> None:
        reported.append(result)

    try:
        reconciler = Reconciler(
            ReadModels(pool, pg_target.schema),
            publish,
            zones=frozenset({cloud.fabric.zone}),
            effector="reconciler@test",
            hypervisor_for=executor.hypervisor,
            names=NAMES,
        )
        assert await reconciler.reconcile_once() == []
    finally:
        executor.close()
        await pool.close()
    assert reported == []


async def test_a_running_vm_migrates_between_libvirtds(cloud: Cloud, hosts: list[LabHost]):
    vm_id = await cloud.deploy("app", host_id=cloud.fabric.host_of(hosts[0]))
    assert running_on(hosts, vm_id) == ["h1"]
    qemu_before = domain_states(hosts, vm_id)

    # The planner picks another host; the guest moves there and only there.
    assert await cloud.operate("vm.migrate", vm_id) == ("succeeded", "")
    there = cloud.where(vm_id)
    assert there != "h1" and cloud.vm(vm_id).state == "Running"
    assert running_on(hosts, vm_id) == [there]
    assert domain_states(hosts, vm_id).keys() == {there}  # undefined on the source
    assert reserved_on(cloud.store, cloud.fabric, vm_id) == [there]
    assert qemu_before.keys() == {"h1"}

    # And on to a named host.
    target = next(h for h in hosts if h.name not in ("h1", there))
    migrate = {"host_id": cloud.fabric.host_of(target)}
    assert await cloud.operate("vm.migrate", vm_id, **migrate) == ("succeeded", "")
    assert cloud.where(vm_id) == target.name
    assert running_on(hosts, vm_id) == [target.name]
    assert reserved_on(cloud.store, cloud.fabric, vm_id) == [target.name]

    # Stopped and started again where it now is: its disks are reached there.
    assert await cloud.operate("vm.stop", vm_id) == ("succeeded", "")
    assert await cloud.operate("vm.start", vm_id) == ("succeeded", "")
    assert running_on(hosts, vm_id) == [target.name]


async def test_a_refused_migration_leaves_the_vm_running_on_its_source(
    cloud: Cloud, hosts: list[LabHost]
):
    source, target = hosts[0], hosts[1]
    vm_id = await cloud.deploy("db", host_id=cloud.fabric.host_of(source))
    # The destination has another domain of that name: libvirt refuses the
    # incoming migration there.
    squatter = libvirt.open(target.uri)
    try:
        squatter.defineXML(
            f"<domain type='qemu'><name>{NAMES.domain(vm_id)}</name>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
        )
        status, error = await cloud.operate(
            "vm.migrate", vm_id, host_id=cloud.fabric.host_of(target)
        )
        assert status == "failed" and "already exists" in error, error
        vm = cloud.vm(vm_id)
        assert (vm.state, cloud.where(vm_id)) == ("Running", "h1")
        assert running_on(hosts, vm_id) == ["h1"]
        assert reserved_on(cloud.store, cloud.fabric, vm_id) == ["h1"]
        # Its host's DHCP (which forgot it while it was to move) knows it again.
        network = NAMES.network(cloud.fabric.network)
        assert nic_mac(source, vm_id) in dhcp_known(source, network)
    finally:
        squatter.lookupByName(NAMES.domain(vm_id)).undefine()
        squatter.close()
    # Nothing is left in its way: the same migration goes through.
    migrate = {"host_id": cloud.fabric.host_of(target)}
    assert await cloud.operate("vm.migrate", vm_id, **migrate) == ("succeeded", "")
    assert running_on(hosts, vm_id) == [target.name]


async def test_lab_down_under_the_engines_vms_leaves_nothing(
    pg_target, service, store, broker, topic_prefix, own_lab: Lab, tmp_path
):
    hosts = own_lab.up(2)
    async with lab_cloud(pg_target, service, store, broker, topic_prefix, hosts, tmp_path) as cloud:
        vms = [await cloud.deploy(f"vm-{h.name}", host_id=cloud.fabric.host_of(h)) for h in hosts]
        assert [running_on(hosts, vm_id) for vm_id in vms] == [["h1"], ["h2"]]
        network = NAMES.network(cloud.fabric.network)
        assert len(pids_with(f"{network}.conf")) == 2 * 2  # dnsmasq (and its helper) per host

        own_lab.down()

        assert leftovers(own_lab.state_dir) == []
        assert [qemu_pids(NAMES.domain(vm_id)) for vm_id in vms] == [[], []]
        assert pids_with(f"{network}.conf") == []


async def test_a_stopped_vm_migrates_offline_with_its_local_disk(
    cloud: Cloud, hosts: list[LabHost]
):
    h1, h2 = hosts[0], hosts[1]
    fabric = cloud.fabric
    one, two = fabric.host_of(h1), fabric.host_of(h2)
    # Only the hosts' local pools: its root disk goes on h1's.
    await cloud.service.execute_async(DisableStoragePool(pool_id=fabric.shared_pool))
    vm_id = await cloud.deploy("local", host_id=one)
    root_id = cloud.vm(vm_id).disks[0]
    assert cloud.vm(vm_id).pool_id == fabric.local_pools[one]
    with pytest.raises(Conflict, match="migrates only on shared storage"):
        await cloud.service.execute_async(VmOperation(kind="vm.migrate", vm_id=vm_id))

    assert await cloud.operate("vm.stop", vm_id) == ("succeeded", "")
    source = fabric.local_dirs[one] / f"{root_id}.qcow2"
    target = fabric.local_dirs[two] / f"{root_id}.qcow2"
    write = qemu_io(source, "qcow2", "write -P 0x6b 1M 64k")  # the guest's own data
    assert write.returncode == 0, write.stderr

    assert await cloud.operate("vm.migrate", vm_id, host_id=two) == ("succeeded", "")
    vm = cloud.vm(vm_id)
    assert (vm.state, vm.host_id, vm.last_host_id) == ("Stopped", None, two)
    assert vm.pool_id == fabric.local_pools[two]
    root = cloud.store.load(root_id)
    assert isinstance(root, Volume) and root.pool_id == fabric.local_pools[two]
    assert not source.exists() and target.exists()
    # A standalone copy: the template's bytes (from the base image it
    # backed onto) and the guest's.
    read = qemu_io(target, "qcow2", "read -P 0x5a 0 64k")
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout
    read = qemu_io(target, "qcow2", "read -P 0x6b 1M 64k")
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout
    assert domain_states(hosts, vm_id) == {}  # defined again where it starts
    pools = {p: cloud.store.load(fabric.local_pools[h]) for p, h in (("h1", one), ("h2", two))}
    assert [root_id in pools[p].reservations for p in ("h1", "h2")] == [False, True]

    assert await cloud.operate("vm.start", vm_id) == ("succeeded", "")
    assert running_on(hosts, vm_id) == ["h2"]
