"""A VM deployed from a bootable ISO end to end (real PostgreSQL, the dev
broker, qemu:///system under TCG, the engine's operation manager, recorder
and an effector in process): an ISO template registered and downloaded
over loopback HTTP, a deploy with an empty root disk that boots the ISO
to the guest's shell, then detach-iso and attach-iso on the running VM as
operations that end when the effector has changed the media."""

from __future__ import annotations

import shutil

import pytest
from effector_pipeline import Pipeline, domains_with_uuid, wait_for
from fabric_setup import orchestrated_fabric
from test_iso_guest import cdrom  # the hdd drive's media and boot order

from cloud_engine.effectors.compute.console import SerialConsole
from cloud_engine.effectors.naming import Names
from cloud_engine.engine.commands.operations import DeployVm, VmOperation
from cloud_engine.engine.commands.storage import RegisterTemplate, RequestTemplateDownload
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.store import EventStore
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume
from cloud_engine.runner import guest_image

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt]


async def run_op(service, store: EventStore, pipeline: Pipeline, command) -> Operation:
    op_id = (await service.execute_async(command)).aggregate_id

    def finished() -> bool:
        op = store.load(op_id)
        return isinstance(op, Operation) and op.finished

    await wait_for(f"operation {op_id}", finished, pipeline)
    op = store.load(op_id)
    assert isinstance(op, Operation) and op.status == "succeeded", op.error
    return op


async def test_deploy_from_an_iso_and_change_its_media(
    pg_target, service, store, broker, topic_prefix, libvirt_uri, hypervisor, name_prefix,
    tmp_path, served,
):  # fmt: skip
    pipeline = Pipeline(pg_target, broker, topic_prefix)
    try:
        fabric = await orchestrated_fabric(
            pipeline, service, store, libvirt_uri, tmp_path, served, Names(prefix=name_prefix)
        )
        shutil.copyfile(guest_image.ensure().iso, served.root / "tiny-linux.iso")
        iso = (
            await service.execute_async(
                RegisterTemplate(
                    name="tiny-linux-live",
                    zone_id=fabric.zone,
                    format="iso",
                    url=f"{served.base_url}/tiny-linux.iso",
                    size_bytes=11 << 20,
                    os_type="Linux",
                    bootable=True,
                )
            )
        ).aggregate_id
        await service.execute_async(RequestTemplateDownload(template_id=iso))
        await wait_for(
            "ISO Ready", lambda: getattr(store.load(iso), "state", "") == "Ready", pipeline
        )

        deploy = await run_op(
            service, store, pipeline,
            DeployVm(account="acme", name="live", zone_id=fabric.zone, template_id=iso,
                     spec=VmSpec(cpus=1, ram_mb=256, root_disk_gb=1)),
        )  # fmt: skip
        vm_id = deploy.resource_id
        vm = store.load(vm_id)
        assert isinstance(vm, VirtualMachine) and (vm.state, vm.iso_id) == ("Running", iso)
        root = store.load(deploy.params.volume_ids[0])
        assert isinstance(root, Volume) and root.template_id is None  # empty
        (dom,) = domains_with_uuid(hypervisor, vm_id)
        in_pool = str(tmp_path / "primary" / f"iso-{iso}.iso")
        assert cdrom(dom.XMLDesc(0)) == (in_pool, "1")

        with SerialConsole(libvirt_uri, vm_id) as console:
            console.write(b"\n")
            console.expect("tiny-linux", 120)
            console.read(0.2)
            console.write(b"findfs LABEL=TINYLINUX_LIVE; echo end-''iso\n")
            assert "/dev/sr" in console.expect("end-iso", 60)

        await run_op(service, store, pipeline, VmOperation(kind="vm.detach_iso", vm_id=vm_id))
        assert cdrom(dom.XMLDesc(0)) == (None, "1")
        await run_op(
            service, store, pipeline, VmOperation(kind="vm.attach_iso", vm_id=vm_id, iso_id=iso)
        )
        assert cdrom(dom.XMLDesc(0)) == (in_pool, "1")
        vm = store.load(vm_id)
        assert isinstance(vm, VirtualMachine) and not vm.media_pending and vm.iso_id == iso
    finally:
        await pipeline.close()
