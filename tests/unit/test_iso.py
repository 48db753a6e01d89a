"""ISO templates and a VM's CD-ROM (vm.attach_iso, vm.detach_iso, a deploy
from a bootable ISO) on an in-memory unit of work: the steps, the effector's
answer for a running VM, and the refusals (nothing recorded)."""

from uuid import UUID, uuid4

import pytest

from cloud_engine.engine.commands.compute import FailVmMedia, MarkVmMediaChanged
from cloud_engine.engine.commands.operations import (
    AdvanceOperation,
    FailOperation,
    VmOperation,
)
from cloud_engine.engine.commands.storage import (
    CreateVolume,
    MarkTemplateDownloaded,
    RegisterTemplate,
    RequestTemplateDownload,
)
from cloud_engine.engine.errors import Conflict, InvalidTransition, NotFound, Validation
from cloud_engine.engine.operations.guard import ResourceGuard, guard_id
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.template import Template
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume
from tests.unit.operation_world import GIB, World


@pytest.fixture
def world() -> World:
    return World()


def iso(world: World, *, bootable: bool = True, ready: bool = True) -> UUID:
    template_id = world.run(
        RegisterTemplate(
            name="installer",
            zone_id=world.zone,
            url="http://127.0.0.1:9/installer.iso",
            format="iso",
            size_bytes=20 << 20,
            os_type="Linux",
            bootable=bootable,
        )
    )
    if ready:
        world.run(RequestTemplateDownload(template_id=template_id))
        world.run(MarkTemplateDownloaded(template_id=template_id))
    return template_id


def attach(world: World, vm_id: UUID, iso_id: UUID) -> Operation:
    op_id = world.run(VmOperation(kind="vm.attach_iso", vm_id=vm_id, iso_id=iso_id))
    return world.get(Operation, op_id)


def detach(world: World, vm_id: UUID) -> Operation:
    return world.get(Operation, world.run(VmOperation(kind="vm.detach_iso", vm_id=vm_id)))


def released(world: World, vm_id: UUID) -> bool:
    return world.get(ResourceGuard, guard_id(vm_id)).operation_id is None


def test_an_iso_template_is_registered_bootable_or_not(world: World):
    t = world.get(Template, iso(world, bootable=False))
    assert (t.format, t.bootable, t.state) == ("iso", False, "Ready")
    with pytest.raises(Validation) as refused:
        Template.create(
            "disk", uuid4(), "https://x.example/d.qcow2", "qcow2", GIB, "Linux", bootable=False
        )
    assert refused.value.field == "bootable"
    with pytest.raises(Validation) as refused:
        Template.create("d", uuid4(), "https://x.example/d.vmdk", "vmdk", GIB, "Linux")  # type: ignore[arg-type]
    assert refused.value.field == "format"


def test_a_stopped_vm_takes_and_gives_back_an_iso_in_one_step(world: World):
    _, vm_id = world.stopped_vm(network_ids=())
    iso_id = iso(world)
    op = attach(world, vm_id, iso_id)
    vm = world.get(VirtualMachine, vm_id)
    assert op.status == "succeeded" and [s.name for s in op.steps] == ["media"]
    assert op.params.target_id == iso_id
    assert (vm.iso_id, vm.media_pending) == (iso_id, False) and released(world, vm_id)
    op = detach(world, vm_id)
    assert op.status == "succeeded" and vm.iso_id is None and released(world, vm_id)
    # The effector's answer to the stopped VM's work (nothing to change) is no news.
    world.run(MarkVmMediaChanged(vm_id=vm_id))
    assert vm.iso_id is None and vm.media_error is None


def test_a_running_vm_waits_for_the_effector(world: World):
    _, vm_id = world.running_vm(network_ids=())
    iso_id = iso(world)
    op = attach(world, vm_id, iso_id)
    vm = world.get(VirtualMachine, vm_id)
    assert op.status == "pending" and vm.media_pending and vm.iso_id == iso_id
    world.run(AdvanceOperation(operation_id=op.id))
    assert op.status == "pending" and not released(world, vm_id)  # no answer yet
    world.run(MarkVmMediaChanged(vm_id=vm_id))
    world.run(AdvanceOperation(operation_id=op.id))
    assert op.status == "succeeded" and not vm.media_pending and released(world, vm_id)
    # An eject the hypervisor refused: the drive keeps its ISO, the operation fails.
    op = detach(world, vm_id)
    assert vm.iso_id is None and vm.media_pending
    world.run(FailVmMedia(vm_id=vm_id, reason="the tray is locked"))
    world.run(AdvanceOperation(operation_id=op.id))
    assert op.status == "failed" and op.error == "the tray is locked"
    assert (vm.iso_id, vm.media_error) == (iso_id, "the tray is locked")
    assert released(world, vm_id)


def test_an_unanswered_live_change_times_out_keeping_the_old_media(world: World):
    _, vm_id = world.running_vm(network_ids=())
    op = attach(world, vm_id, iso(world))
    world.run(FailOperation(operation_id=op.id, reason="no answer in 60 s", timed_out=True))
    vm = world.get(VirtualMachine, vm_id)
    assert op.status == "failed" and vm.iso_id is None and not vm.media_pending
    # A late answer changes nothing.
    world.run(MarkVmMediaChanged(vm_id=vm_id))
    assert vm.iso_id is None


def test_attach_refusals_record_nothing(world: World):
    _, vm_id = world.stopped_vm(network_ids=())
    vm = world.get(VirtualMachine, vm_id)

    def refused(exc: type[Exception], iso_id: UUID | None, field: str | None) -> None:
        with pytest.raises(exc) as caught:
            world.run(VmOperation(kind="vm.attach_iso", vm_id=vm_id, iso_id=iso_id))
        assert getattr(caught.value, "field", None) == field
        assert vm.iso_id in (None, first) and released(world, vm_id)

    first = None
    refused(Validation, None, "iso_id")
    refused(NotFound, uuid4(), "iso_id")
    refused(Validation, world.template, "iso_id")  # a disk image
    refused(InvalidTransition, iso(world, ready=False), None)  # not downloaded
    first = iso(world)
    attach(world, vm_id, first)
    refused(Validation, first, "iso_id")  # attached already
    refused(Conflict, iso(world), "iso_id")  # another one: detach it first
    detach(world, vm_id)
    with pytest.raises(Conflict, match="no ISO"):
        detach(world, vm_id)
    assert released(world, vm_id)


def test_a_destroyed_vm_takes_no_iso(world: World):
    _, vm_id = world.stopped_vm(network_ids=())
    destroy = world.run(VmOperation(kind="vm.destroy", vm_id=vm_id))
    world.run(AdvanceOperation(operation_id=destroy))
    with pytest.raises(InvalidTransition, match="attach an ISO"):
        attach(world, vm_id, iso(world))


def test_a_vm_deployed_from_a_bootable_iso_has_an_empty_root_disk(world: World):
    iso_id = iso(world)
    op_id, vm_id = world.deploy(template_id=iso_id, network_ids=(), data_disks_gb=())
    vm = world.get(VirtualMachine, vm_id)
    assert vm.iso_id == iso_id and vm.template_id == iso_id
    (root_id,) = world.get(Operation, op_id).params.volume_ids
    root = world.get(Volume, root_id)
    assert root.template_id is None and root.size_bytes == 10 * GIB


def test_deploy_refuses_a_non_bootable_iso_and_volumes_refuse_isos(world: World):
    data_iso = iso(world, bootable=False)
    with pytest.raises(Validation, match="not bootable") as refused:
        world.deploy(template_id=data_iso, spec=VmSpec(cpus=1, ram_mb=512, root_disk_gb=1))
    assert refused.value.field == "template_id"
    with pytest.raises(Validation, match="is an ISO") as refused:
        world.run(
            CreateVolume(
                account="acme",
                name="d",
                zone_id=world.zone,
                size_bytes=GIB,
                kind="data",
                template_id=data_iso,
            )
        )
    assert refused.value.field == "template_id"
