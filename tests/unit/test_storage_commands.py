from uuid import uuid4

import msgspec
import pytest

from cloud_engine.engine.commands import storage
from cloud_engine.engine.commands.base import HANDLERS, Command, dispatch
from cloud_engine.engine.commands.storage import (
    AttachVolume,
    CreateSnapshot,
    CreateVolume,
    DeactivateTemplate,
    DestroySnapshot,
    DestroyVolume,
    DetachVolume,
    FailSnapshot,
    FailTemplate,
    FailVolume,
    MarkSnapshotBackedUp,
    MarkSnapshotCreated,
    MarkTemplateDownloaded,
    MarkVolumeCreated,
    MarkVolumeResized,
    MarkVolumeReverted,
    ReactivateTemplate,
    RegisterTemplate,
    RequestTemplateDownload,
    RequestVolumeCreation,
    RequestVolumeResize,
    RequestVolumeRevert,
)
from cloud_engine.engine.errors import Conflict, InvalidTransition, NotFound, Validation
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.snapshot import Snapshot
from cloud_engine.engine.virtual.template import Template
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from cloud_engine.engine.virtual.volume import Volume

GIB = 1 << 30
HOST, POOL = uuid4(), uuid4()


@pytest.fixture
def uow():
    return InMemoryUnitOfWork()


@pytest.fixture
def zone(uow):
    zone = Zone.create("zone-1")
    uow.add(zone)
    return zone


def register(uow, zone_id, **overrides):
    values = {
        "name": "ubuntu",
        "zone_id": zone_id,
        "url": "https://images.example/u.qcow2",
        "format": "qcow2",
        "size_bytes": 2 * GIB,
        "os_type": "Ubuntu",
    }
    values.update(overrides)
    return dispatch(uow, RegisterTemplate(**values)).aggregate_id


@pytest.fixture
def template(uow, zone):
    template_id = register(uow, zone.id)
    dispatch(uow, RequestTemplateDownload(template_id=template_id))
    dispatch(uow, MarkTemplateDownloaded(template_id=template_id))
    return uow.get(Template, template_id)


def add_vm(uow, zone_id, template_id, *, state="Allocated", account="acme"):
    vm = VirtualMachine.create(
        account, "web-1", zone_id, template_id, VmSpec(cpus=1, ram_mb=512, root_disk_gb=10)
    )
    if state != "Allocated":
        vm.place(HOST, POOL)
        vm.start_requested(HOST)
        vm.mark_running()
    if state in ("Destroyed", "Expunging"):
        vm.destroy()
    if state == "Expunging":
        vm.expunge_requested()
    uow.add(vm)
    return vm


def ready_volume(uow, zone, **overrides):
    values = {"account": "acme", "name": "vol", "zone_id": zone.id, "size_bytes": 10 * GIB}
    values.update(overrides)
    volume_id = dispatch(uow, CreateVolume(**values)).aggregate_id
    dispatch(uow, RequestVolumeCreation(volume_id=volume_id, pool_id=POOL))
    dispatch(uow, MarkVolumeCreated(volume_id=volume_id))
    return uow.get(Volume, volume_id)


def test_every_storage_command_has_a_handler():
    commands = [
        c
        for c in vars(storage).values()
        if isinstance(c, type) and issubclass(c, Command) and c.__module__ == storage.__name__
    ]
    assert len(commands) == 24
    assert all(c in HANDLERS for c in commands)


# Volumes -------------------------------------------------------------------------


def test_volume_lifecycle_through_handlers(uow, zone, template):
    vm = add_vm(uow, zone.id, template.id, state="Running")
    volume = ready_volume(uow, zone)
    for command in [
        AttachVolume(volume_id=volume.id, vm_id=vm.id, device_id=1),
        RequestVolumeResize(volume_id=volume.id, new_size_bytes=20 * GIB),
        MarkVolumeResized(volume_id=volume.id),
        DetachVolume(volume_id=volume.id),
        DestroyVolume(volume_id=volume.id),
    ]:
        assert dispatch(uow, command).aggregate_id == volume.id
    assert (volume.state, volume.size_bytes) == ("Destroyed", 20 * GIB)
    assert len([e for e in uow.commit() if e.originator_id == volume.id]) == 8


def test_create_volume_with_given_id_and_conflict(uow, zone):
    given = uuid4()
    dispatch(uow, CreateVolume(id=given, account="a", name="v", zone_id=zone.id, size_bytes=1))
    assert uow.get(Volume, given).kind == "data"
    with pytest.raises(Conflict):
        dispatch(uow, CreateVolume(id=given, account="a", name="v", zone_id=zone.id, size_bytes=1))


def test_create_volume_checks_zone_and_template(uow, zone, template):
    base = {"account": "a", "name": "root", "zone_id": zone.id, "size_bytes": 10 * GIB}
    with pytest.raises(NotFound) as info:
        dispatch(uow, CreateVolume(**{**base, "zone_id": uuid4()}))
    assert info.value.field == "zone_id"
    with pytest.raises(NotFound) as info:
        dispatch(uow, CreateVolume(**base, template_id=uuid4()))
    assert info.value.field == "template_id"
    with pytest.raises(Validation) as info:
        dispatch(uow, CreateVolume(**{**base, "size_bytes": GIB}, template_id=template.id))
    assert info.value.field == "size_bytes"
    dispatch(uow, DeactivateTemplate(template_id=template.id))
    with pytest.raises(InvalidTransition):
        dispatch(uow, CreateVolume(**base, kind="root", template_id=template.id))
    dispatch(uow, ReactivateTemplate(template_id=template.id))
    created = dispatch(uow, CreateVolume(**base, kind="root", template_id=template.id))
    assert uow.get(Volume, created.aggregate_id).template_id == template.id


def test_create_volume_refuses_template_of_another_zone(uow, zone):
    other_zone = Zone.create("zone-2")
    uow.add(other_zone)
    template_id = register(uow, other_zone.id)
    template = uow.get(Template, template_id)
    template.download_requested()
    template.downloaded()
    with pytest.raises(Validation) as info:
        dispatch(
            uow,
            CreateVolume(
                account="a", name="v", zone_id=zone.id, size_bytes=10 * GIB, template_id=template_id
            ),
        )
    assert info.value.field == "template_id"


def test_attach_checks_the_vm(uow, zone, template):
    volume = ready_volume(uow, zone)
    with pytest.raises(NotFound) as info:
        dispatch(uow, AttachVolume(volume_id=volume.id, vm_id=uuid4(), device_id=1))
    assert info.value.field == "vm_id"
    stranger = add_vm(uow, zone.id, template.id, account="other")
    with pytest.raises(Validation):
        dispatch(uow, AttachVolume(volume_id=volume.id, vm_id=stranger.id, device_id=1))
    far = add_vm(uow, uuid4(), template.id)
    with pytest.raises(Validation):
        dispatch(uow, AttachVolume(volume_id=volume.id, vm_id=far.id, device_id=1))
    gone = add_vm(uow, zone.id, template.id, state="Destroyed")
    with pytest.raises(InvalidTransition):
        dispatch(uow, AttachVolume(volume_id=volume.id, vm_id=gone.id, device_id=1))
    assert volume.state == "Ready"


def test_root_volume_attaches_only_to_a_vm_that_is_not_running(uow, zone, template):
    root = ready_volume(uow, zone, kind="root")
    running = add_vm(uow, zone.id, template.id, state="Running")
    with pytest.raises(InvalidTransition):
        dispatch(uow, AttachVolume(volume_id=root.id, vm_id=running.id, device_id=0))
    fresh = add_vm(uow, zone.id, template.id)
    dispatch(uow, AttachVolume(volume_id=root.id, vm_id=fresh.id, device_id=0))
    assert root.vm_id == fresh.id


def test_root_volume_detaches_only_once_its_vm_is_expunging(uow, zone, template):
    root = ready_volume(uow, zone, kind="root")
    vm = add_vm(uow, zone.id, template.id)
    dispatch(uow, AttachVolume(volume_id=root.id, vm_id=vm.id, device_id=0))
    with pytest.raises(Validation):
        dispatch(uow, DetachVolume(volume_id=root.id))
    vm.destroy()
    vm.expunge_requested()
    dispatch(uow, DetachVolume(volume_id=root.id))
    dispatch(uow, DestroyVolume(volume_id=root.id))
    assert root.state == "Destroyed"


def test_failed_volume(uow, zone):
    volume_id = dispatch(
        uow, CreateVolume(account="a", name="v", zone_id=zone.id, size_bytes=GIB)
    ).aggregate_id
    dispatch(uow, RequestVolumeCreation(volume_id=volume_id, pool_id=POOL))
    dispatch(uow, FailVolume(volume_id=volume_id, reason="pool offline"))
    assert uow.get(Volume, volume_id).state == "Error"


# Snapshots and revert ------------------------------------------------------------


def test_snapshot_and_revert_through_handlers(uow, zone):
    volume = ready_volume(uow, zone)
    snap_id = dispatch(
        uow, CreateSnapshot(volume_id=volume.id, name="s1", kind="external")
    ).aggregate_id
    with pytest.raises(InvalidTransition) as info:
        dispatch(uow, RequestVolumeRevert(volume_id=volume.id, snapshot_id=snap_id))
    assert info.value.state == "Creating"
    dispatch(uow, MarkSnapshotCreated(snapshot_id=snap_id))
    dispatch(uow, MarkSnapshotBackedUp(snapshot_id=snap_id))
    dispatch(uow, RequestVolumeRevert(volume_id=volume.id, snapshot_id=snap_id))
    assert volume.reverting_to == snap_id
    with pytest.raises(InvalidTransition):
        dispatch(uow, CreateSnapshot(volume_id=volume.id, name="s2"))
    dispatch(uow, MarkVolumeReverted(volume_id=volume.id))
    dispatch(uow, DestroySnapshot(snapshot_id=snap_id))
    assert uow.get(Snapshot, snap_id).state == "Destroyed"


def test_revert_needs_a_snapshot_of_the_same_volume(uow, zone):
    volume, other = ready_volume(uow, zone), ready_volume(uow, zone)
    snap_id = dispatch(uow, CreateSnapshot(volume_id=other.id, name="s")).aggregate_id
    dispatch(uow, MarkSnapshotCreated(snapshot_id=snap_id))
    with pytest.raises(Validation) as info:
        dispatch(uow, RequestVolumeRevert(volume_id=volume.id, snapshot_id=snap_id))
    assert info.value.field == "snapshot_id"
    with pytest.raises(NotFound) as info:
        dispatch(uow, RequestVolumeRevert(volume_id=volume.id, snapshot_id=uuid4()))
    assert info.value.field == "snapshot_id"


def test_create_snapshot_checks_the_volume(uow, zone):
    with pytest.raises(NotFound) as info:
        dispatch(uow, CreateSnapshot(volume_id=uuid4(), name="s"))
    assert info.value.field == "volume_id"
    volume_id = dispatch(
        uow, CreateVolume(account="a", name="v", zone_id=zone.id, size_bytes=GIB)
    ).aggregate_id
    with pytest.raises(InvalidTransition):
        dispatch(uow, CreateSnapshot(volume_id=volume_id, name="s"))
    given = uuid4()
    volume = ready_volume(uow, zone)
    assert (
        dispatch(uow, CreateSnapshot(id=given, volume_id=volume.id, name="s")).aggregate_id == given
    )


def test_failed_snapshot(uow, zone):
    volume = ready_volume(uow, zone)
    snap_id = dispatch(uow, CreateSnapshot(volume_id=volume.id, name="s")).aggregate_id
    dispatch(uow, FailSnapshot(snapshot_id=snap_id, reason="no space"))
    assert uow.get(Snapshot, snap_id).state == "Error"


# Templates -----------------------------------------------------------------------


def test_template_lifecycle_through_handlers(uow, zone):
    given = uuid4()
    assert register(uow, zone.id, id=given, checksum="sha256:00") == given
    dispatch(uow, RequestTemplateDownload(template_id=given))
    dispatch(uow, FailTemplate(template_id=given, reason="404"))
    dispatch(uow, RequestTemplateDownload(template_id=given))
    dispatch(uow, MarkTemplateDownloaded(template_id=given))
    dispatch(uow, DeactivateTemplate(template_id=given))
    assert uow.get(Template, given).state == "Inactive"


def test_register_template_needs_the_zone(uow):
    with pytest.raises(NotFound) as info:
        register(uow, uuid4())
    assert info.value.field == "zone_id"


def test_decoding_enforces_field_constraints():
    volume = {"account": "a", "name": "v", "zone_id": str(uuid4()), "size_bytes": 0}
    with pytest.raises(msgspec.ValidationError, match="size_bytes"):
        msgspec.convert(volume, CreateVolume, strict=False)
    with pytest.raises(msgspec.ValidationError, match="kind"):
        msgspec.convert({**volume, "size_bytes": 1, "kind": "swap"}, CreateVolume, strict=False)
    attach = {"volume_id": str(uuid4()), "vm_id": str(uuid4()), "device_id": -1}
    with pytest.raises(msgspec.ValidationError, match="device_id"):
        msgspec.convert(attach, AttachVolume, strict=False)
    with pytest.raises(msgspec.ValidationError, match="format"):
        msgspec.convert(
            {
                "name": "t",
                "zone_id": str(uuid4()),
                "url": "https://x/y",
                "format": "vmdk",
                "size_bytes": 1,
                "os_type": "x",
            },
            RegisterTemplate,
            strict=False,
        )
