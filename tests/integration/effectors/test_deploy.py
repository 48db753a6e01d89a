"""Deploying VMs end to end on real PostgreSQL, the dev broker and
qemu:///system: DeployVm -> the operation manager plans and places ->
effectors create the volumes (from a template fetched over HTTP), realise
the networks, define and start the domains -> Running; then the lifecycle
of one VM through operations, anti-affinity, an unplaceable VM, and the
guard."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from effector_pipeline import Pipeline, domains_with_uuid, is_running, wait_for
from fabric_setup import orchestrated_fabric

from cloud_engine.effectors.naming import Names
from cloud_engine.engine.commands.operations import DeployVm, VmOperation
from cloud_engine.engine.errors import Conflict
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]

SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)


def op_status(store: EventStore, op_id: uuid.UUID) -> str:
    op = store.load(op_id)
    assert isinstance(op, Operation)
    return op.status


def finished(store: EventStore, op_id: uuid.UUID) -> bool:
    return op_status(store, op_id) in ("succeeded", "failed", "compensated")


async def run_op(service, store, pipeline, command) -> uuid.UUID:
    result = await service.execute_async(command)
    op_id = result.aggregate_id
    await wait_for(f"operation {op_id}", lambda: finished(store, op_id), pipeline)
    return op_id


async def test_deploy_lifecycle_affinity_and_refusals(
    pg_target, service, store, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix,
    tmp_path, served,
):  # fmt: skip
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    try:
        fabric = await orchestrated_fabric(
            pipeline, service, store, libvirt_uri, tmp_path, served, Names(prefix=name_prefix),
            hosts=2, cpu_cores=4, ram_mb=1024,
        )  # fmt: skip

        def deploy(name: str, **extra) -> DeployVm:
            values = {
                "account": "acme",
                "name": name,
                "zone_id": fabric.zone,
                "template_id": fabric.template,
                "spec": SPEC,
                "network_ids": tuple(fabric.networks),
            }
            return DeployVm(**{**values, **extra})

        # Two VMs of one strict anti-affinity group, concurrently.
        results = await asyncio.gather(
            *(service.execute_async(deploy(f"web-{i}", affinity_group="web")) for i in range(2))
        )
        ops = [r.aggregate_id for r in results]
        vms = [uuid.UUID(str(r.value)) for r in results]

        # The guard: a stop while the deploy runs is refused.
        with pytest.raises(Conflict, match="still running"):
            await service.execute_async(VmOperation(kind="vm.stop", vm_id=vms[0]))

        await wait_for(
            "both deploys finished", lambda: all(finished(store, o) for o in ops), pipeline
        )
        assert [op_status(store, o) for o in ops] == ["succeeded", "succeeded"], [
            getattr(store.load(o), "error", None) for o in ops
        ]
        loaded = [store.load(v) for v in vms]
        assert all(isinstance(v, VirtualMachine) and v.state == "Running" for v in loaded)
        assert {v.host_id for v in loaded} == set(fabric.hosts)  # kept apart
        assert all(is_running(hypervisor, v) for v in vms)

        # Addresses distinct per network, capacity exactly accounted.
        addresses = set()
        for op_id in ops:
            for index in range(2):
                nic = store.load(deploy_ids.nic_id(op_id, index))
                assert isinstance(nic, Nic)
                ip = store.load(nic.ip_id)
                assert isinstance(ip, IpAddress) and ip.state == "Associated"
                addresses.add((nic.network_id, ip.address))
        assert len(addresses) == 4
        used = [store.load(h) for h in fabric.hosts]
        assert [h.cpus_used for h in used if isinstance(h, Host)] == [1, 1]
        pool = store.load(fabric.pool)
        assert isinstance(pool, StoragePool) and pool.used_bytes == 2 * (1 << 30)
        (dom,) = domains_with_uuid(hypervisor, vms[0])
        xml = dom.XMLDesc(0)
        assert str(tmp_path / "primary") in xml and xml.count("<interface") == 2

        # A VM no host can hold fails with the planner's reason, holding nothing.
        big = await service.execute_async(
            deploy("huge", spec=VmSpec(cpus=64, ram_mb=64, root_disk_gb=1))
        )
        await wait_for("unplaceable", lambda: finished(store, big.aggregate_id), pipeline)
        refused = store.load(big.aggregate_id)
        assert isinstance(refused, Operation) and refused.status == "failed"
        assert "cpu" in (refused.error or "")
        huge = store.load(uuid.UUID(str(big.value)))
        assert isinstance(huge, VirtualMachine) and huge.state == "Error"
        assert sum(getattr(store.load(h), "cpus_used", 0) for h in fabric.hosts) == 2

        # The lifecycle of one VM through operations.
        vm = vms[0]
        for kind in ("vm.stop", "vm.start", "vm.reboot", "vm.stop", "vm.destroy", "vm.recover"):
            op_id = await run_op(service, store, pipeline, VmOperation(kind=kind, vm_id=vm))
            assert op_status(store, op_id) == "succeeded", (kind, store.load(op_id).error)
        state = store.load(vm)
        assert isinstance(state, VirtualMachine) and state.state == "Stopped"
        assert not is_running(hypervisor, vm)
        await run_op(service, store, pipeline, VmOperation(kind="vm.destroy", vm_id=vm))
        op_id = await run_op(service, store, pipeline, VmOperation(kind="vm.expunge", vm_id=vm))
        assert op_status(store, op_id) == "succeeded"
        await wait_for(
            "domain undefined", lambda: domains_with_uuid(hypervisor, vm) == [], pipeline
        )
        root = store.load(deploy_ids.volume_id(ops[0], 0))
        assert isinstance(root, Volume) and root.state == "Destroyed"
        await wait_for(
            "volume file deleted",
            lambda: not (tmp_path / "primary" / f"{root.id}.qcow2").exists(),
            pipeline,
        )
        nic = store.load(deploy_ids.nic_id(ops[0], 0))
        assert isinstance(nic, Nic) and nic.state == "Released"
        assert sum(getattr(store.load(h), "cpus_used", 0) for h in fabric.hosts) == 1
    finally:
        await pipeline.close()
