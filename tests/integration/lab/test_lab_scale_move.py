"""Scale and volume moves on the lab (real PostgreSQL, broker, libvirtds):
a stopped VM scaled up starts with the new vCPUs and RAM (QEMU's domain
and the host's reservation say so), scaled down likewise, a running one
is refused; a stopped VM's root disk moved from the shared pool to its
host's local pool keeps its bytes and the VM starts from there; a detached
volume moves from the shared pool to one host's local pool (inside that
libvirtd) and from there to another host's (streamed between the two)."""

from __future__ import annotations

import uuid

import libvirt
import pytest

from cloud_engine.engine.commands.operations import VmOperation, VolumeOperation
from cloud_engine.engine.errors import InvalidTransition
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.lab import LabHost
from tests.integration.effectors.template_server import qemu_io
from tests.integration.lab.lab_cloud import NAMES, Cloud, finish, running_on

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]


def domain_size(lab_host: LabHost, vm_id: uuid.UUID) -> tuple[int, int]:
    """(vCPUs, RAM in MiB) of the VM's running domain, as QEMU was given."""
    conn = libvirt.open(lab_host.uri)
    try:
        info = conn.lookupByName(NAMES.domain(vm_id)).info()
        return info[3], info[1] // 1024
    finally:
        conn.close()


async def move(cloud: Cloud, volume_id: uuid.UUID, pool_id: uuid.UUID) -> Operation:
    result = await cloud.service.execute_async(
        VolumeOperation(kind="volume.migrate", volume_id=volume_id, pool_id=pool_id)
    )
    return await finish(cloud.pipeline, cloud.store, result.aggregate_id)


def volume(cloud: Cloud, volume_id: uuid.UUID) -> Volume:
    found = cloud.store.load(volume_id)
    assert isinstance(found, Volume)
    return found


async def test_scale_a_stopped_vm_up_and_down(cloud: Cloud, hosts: list[LabHost]):
    vm_id = await cloud.deploy("scaled")
    with pytest.raises(InvalidTransition, match="scale"):
        await cloud.service.execute_async(VmOperation(kind="vm.scale", vm_id=vm_id, cpus=2))
    assert await cloud.operate("vm.stop", vm_id) == ("succeeded", "")

    for cpus, ram_mb in ((2, 256), (1, 192)):
        assert await cloud.operate("vm.scale", vm_id, cpus=cpus, ram_mb=ram_mb) == (
            "succeeded",
            "",
        )
        assert await cloud.operate("vm.start", vm_id) == ("succeeded", "")
        host_id = cloud.vm(vm_id).host_id
        lab_host = cloud.fabric.lab_host(host_id)
        assert domain_size(lab_host, vm_id) == (cpus, ram_mb)
        host = cloud.store.load(host_id)
        assert isinstance(host, Host)
        assert (host.reservations[vm_id].cpus, host.reservations[vm_id].ram_mb) == (cpus, ram_mb)
        assert await cloud.operate("vm.stop", vm_id) == ("succeeded", "")


async def test_move_a_stopped_vms_disk_and_a_detached_volume(cloud: Cloud, hosts: list[LabHost]):
    fabric = cloud.fabric
    vm_id = await cloud.deploy("moved", data_disks_gb=(1,))
    assert await cloud.operate("vm.stop", vm_id) == ("succeeded", "")
    vm = cloud.vm(vm_id)
    last = vm.last_host_id
    assert last is not None and vm.pool_id == fabric.shared_pool
    root_id, data_id = vm.disks[0], vm.disks[1]
    shared_dir = fabric.dirs[0]
    write = qemu_io(shared_dir / f"{root_id}.qcow2", "qcow2", "write -P 0x6b 1M 64k")
    assert write.returncode == 0, write.stderr

    # The root disk to its host's local pool (one libvirtd copies it).
    local = fabric.local_pools[last]
    op = await move(cloud, root_id, local)
    assert op.status == "succeeded", op.error
    assert [s.name for s in op.steps] == ["move"]
    target = fabric.local_dirs[last] / f"{root_id}.qcow2"
    assert target.exists() and not (shared_dir / f"{root_id}.qcow2").exists()
    read = qemu_io(target, "qcow2", "read -P 0x6b 1M 64k")
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout
    assert volume(cloud, root_id).pool_id == local and cloud.vm(vm_id).pool_id == local
    pools = {p: cloud.store.load(p) for p in (fabric.shared_pool, local)}
    assert all(isinstance(p, StoragePool) for p in pools.values())
    assert root_id in pools[local].reservations  # type: ignore[union-attr]
    assert root_id not in pools[fabric.shared_pool].reservations  # type: ignore[union-attr]
    # A host-local disk pins the VM to that host: it starts there.
    assert await cloud.operate("vm.start", vm_id) == ("succeeded", "")
    assert running_on(hosts, vm_id) == [fabric.lab_host(last).name]

    # Refused while the guest runs (QEMU holds its disks), nothing recorded.
    with pytest.raises(Exception, match="is Running"):
        await move(cloud, data_id, fabric.shared_pool)
    assert await cloud.operate("vm.stop", vm_id) == ("succeeded", "")
    detach = await cloud.service.execute_async(
        VolumeOperation(kind="volume.detach", volume_id=data_id)
    )
    assert (await finish(cloud.pipeline, cloud.store, detach.aggregate_id)).status == "succeeded"

    # Detached: to one host's local pool, then streamed to another's.
    one, two = (h for h in fabric.hosts if h != last)
    for host_id in (one, two):
        op = await move(cloud, data_id, fabric.local_pools[host_id])
        assert op.status == "succeeded", op.error
        assert volume(cloud, data_id).pool_id == fabric.local_pools[host_id]
        assert (fabric.local_dirs[host_id] / f"{data_id}.qcow2").exists()
    assert not (fabric.local_dirs[one] / f"{data_id}.qcow2").exists()
    assert not (shared_dir / f"{data_id}.qcow2").exists()
