"""Volume operations and migration end to end on real PostgreSQL, the dev
broker and qemu:///system: a deployed VM is migrated to the other host
(both hosts are this libvirtd: the domain stays, capacity moves), stopped,
given a new data volume (created by the effector, attached as vdb at the next
start), its root disk snapshotted, resized and reverted, the data volume
detached; a volume operation on the running VM is refused."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from effector_pipeline import Pipeline, domains_with_uuid, is_running, wait_for
from fabric_setup import orchestrated_fabric

from cloud_engine.effectors.naming import Names
from cloud_engine.engine.commands.operations import DeployVm, VmOperation, VolumeOperation
from cloud_engine.engine.commands.storage import CreateVolume
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.snapshot import Snapshot
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

GiB = 1 << 30


def finished(store: EventStore, op_id: uuid.UUID) -> bool:
    op = store.load(op_id)
    return isinstance(op, Operation) and op.finished


async def run_op(service, store, pipeline, command) -> Operation:
    result = await service.execute_async(command)
    await wait_for(f"{command}", lambda: finished(store, result.aggregate_id), pipeline)
    op = store.load(result.aggregate_id)
    assert isinstance(op, Operation)
    assert op.status == "succeeded", (op.kind, op.error)
    return op


def image_info(path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


async def test_volume_operations_and_migration(
    pg_target, service, store, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix,
    tmp_path, served,
):  # fmt: skip
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    try:
        fabric = await orchestrated_fabric(
            pipeline, service, store, libvirt_uri, tmp_path, served, Names(prefix=name_prefix),
            hosts=2, cpu_cores=4, ram_mb=1024,
        )  # fmt: skip
        deployed = await service.execute_async(
            DeployVm(
                account="acme",
                name="app",
                zone_id=fabric.zone,
                template_id=fabric.template,
                spec=VmSpec(cpus=1, ram_mb=64, root_disk_gb=1),
                host_id=fabric.hosts[0],
            )
        )
        vm_id = uuid.UUID(str(deployed.value))
        await wait_for("deploy", lambda: finished(store, deployed.aggregate_id), pipeline)
        root_id = deploy_ids.volume_id(deployed.aggregate_id, 0)

        def vm() -> VirtualMachine:
            loaded = store.load(vm_id)
            assert isinstance(loaded, VirtualMachine)
            return loaded

        def cpus(host_id: uuid.UUID) -> int:
            host = store.load(host_id)
            assert isinstance(host, Host)
            return host.cpus_used

        assert vm().state == "Running" and vm().host_id == fabric.hosts[0]

        # Migrate: the planner picks the other host; capacity follows.
        await run_op(service, store, pipeline, VmOperation(kind="vm.migrate", vm_id=vm_id))
        assert vm().host_id == fabric.hosts[1] and vm().state == "Running"
        assert [cpus(h) for h in fabric.hosts] == [0, 1]
        assert is_running(hypervisor, vm_id)

        # A volume operation on a running VM is refused at once.
        data = await service.execute_async(
            CreateVolume(account="acme", name="data", zone_id=fabric.zone, size_bytes=GiB)
        )
        with pytest.raises(Conflict, match="is Running"):
            await service.execute_async(
                VolumeOperation(kind="volume.attach", volume_id=data.aggregate_id, vm_id=vm_id)
            )

        await run_op(service, store, pipeline, VmOperation(kind="vm.stop", vm_id=vm_id))
        attach = VolumeOperation(kind="volume.attach", volume_id=data.aggregate_id, vm_id=vm_id)
        await run_op(service, store, pipeline, attach)
        volume = store.load(data.aggregate_id)
        assert isinstance(volume, Volume)
        assert (volume.state, volume.device_id, volume.pool_id) == ("Attached", 1, fabric.pool)
        data_file = tmp_path / "primary" / f"{volume.id}.qcow2"
        assert data_file.exists()
        pool = store.load(fabric.pool)
        assert isinstance(pool, StoragePool) and pool.used_bytes == 2 * GiB

        await run_op(service, store, pipeline, VmOperation(kind="vm.start", vm_id=vm_id))
        (dom,) = domains_with_uuid(hypervisor, vm_id)
        xml = dom.XMLDesc(0)
        assert "vdb" in xml and str(data_file) in xml
        await run_op(service, store, pipeline, VmOperation(kind="vm.stop", vm_id=vm_id))

        # Snapshot the root disk, grow it, revert to the snapshot.
        root_file = tmp_path / "primary" / f"{root_id}.qcow2"
        snap_id = uuid.uuid4()
        take = VolumeOperation(
            kind="volume.snapshot", volume_id=root_id, snapshot_id=snap_id, snapshot_name="pre"
        )
        await run_op(service, store, pipeline, take)
        snapshot = store.load(snap_id)
        assert isinstance(snapshot, Snapshot) and snapshot.state == "Ready"
        assert len(image_info(root_file).get("snapshots", [])) == 1

        grow = VolumeOperation(kind="volume.resize", volume_id=root_id, new_size_bytes=2 * GiB)
        await run_op(service, store, pipeline, grow)
        assert image_info(root_file)["virtual-size"] == 2 * GiB
        pool = store.load(fabric.pool)
        assert isinstance(pool, StoragePool) and pool.used_bytes == 3 * GiB

        revert = VolumeOperation(kind="volume.revert", volume_id=root_id, snapshot_id=snap_id)
        await run_op(service, store, pipeline, revert)
        # The snapshot was taken at 1 GiB: the disk holds its data and size again.
        assert image_info(root_file)["virtual-size"] == GiB

        await run_op(
            service,
            store,
            pipeline,
            VolumeOperation(kind="volume.detach", volume_id=data.aggregate_id),
        )
        volume = store.load(data.aggregate_id)
        assert isinstance(volume, Volume) and (volume.state, volume.vm_id) == ("Ready", None)
        assert 1 not in vm().disks and vm().disks[0] == root_id

        await run_op(service, store, pipeline, VmOperation(kind="vm.destroy", vm_id=vm_id))
        await run_op(service, store, pipeline, VmOperation(kind="vm.expunge", vm_id=vm_id))
        await wait_for(
            "domain undefined", lambda: domains_with_uuid(hypervisor, vm_id) == [], pipeline
        )
        assert [cpus(h) for h in fabric.hosts] == [0, 0]
        assert data_file.exists()  # a detached data volume outlives its VM
    finally:
        await pipeline.close()
