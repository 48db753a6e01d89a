from uuid import uuid4

import msgspec
import pytest

from cloud_engine.engine.commands import compute
from cloud_engine.engine.commands.base import HANDLERS, Command, dispatch
from cloud_engine.engine.commands.compute import (
    CompleteVmMigration,
    CreateVm,
    DestroyVm,
    FailVm,
    FailVmMigration,
    MarkVmExpunged,
    MarkVmRunning,
    MarkVmStopped,
    PlaceVm,
    RebootVm,
    RecoverVm,
    RequestVmExpunge,
    RequestVmMigration,
    RequestVmStart,
    RequestVmStop,
)
from cloud_engine.engine.errors import Conflict, InvalidTransition, NotFound, Validation
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.unit_of_work import InMemoryUnitOfWork
from cloud_engine.engine.virtual.template import Template
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec

GIB = 1 << 30
SPEC = VmSpec(cpus=2, ram_mb=2048, root_disk_gb=20)
HOST_A, HOST_B, POOL = uuid4(), uuid4(), uuid4()


@pytest.fixture
def uow():
    return InMemoryUnitOfWork()


@pytest.fixture
def zone(uow):
    zone = Zone.create("zone-1")
    uow.add(zone)
    return zone


def add_template(uow, zone_id, *, ready=True, size_bytes=2 * GIB):
    template = Template.create(
        "ubuntu", zone_id, "https://images.example/u.qcow2", "qcow2", size_bytes, "Ubuntu"
    )
    if ready:
        template.download_requested()
        template.downloaded()
    uow.add(template)
    return template


@pytest.fixture
def template(uow, zone):
    return add_template(uow, zone.id)


def create_vm(uow, zone, template, **overrides):
    values = {
        "account": "acme",
        "name": "web-1",
        "zone_id": zone.id,
        "template_id": template.id,
        "spec": SPEC,
    }
    values.update(overrides)
    return dispatch(uow, CreateVm(**values))


def test_every_compute_command_has_a_handler():
    commands = [
        c
        for c in vars(compute).values()
        if isinstance(c, type) and issubclass(c, Command) and c is not Command
    ]
    assert len(commands) == 21
    assert all(c in HANDLERS for c in commands)


def test_vm_lifecycle_through_handlers(uow, zone, template):
    vm_id = create_vm(uow, zone, template, network_ids=(uuid4(),)).aggregate_id
    for command in [
        PlaceVm(vm_id=vm_id, host_id=HOST_A, pool_id=POOL),
        RequestVmStart(vm_id=vm_id, host_id=HOST_A),
        MarkVmRunning(vm_id=vm_id),
        RebootVm(vm_id=vm_id),
        RequestVmMigration(vm_id=vm_id, target_host_id=HOST_B),
        FailVmMigration(vm_id=vm_id, reason="link down"),
        RequestVmMigration(vm_id=vm_id, target_host_id=HOST_B),
        CompleteVmMigration(vm_id=vm_id),
        RequestVmStop(vm_id=vm_id, forced=True),
        MarkVmStopped(vm_id=vm_id),
        DestroyVm(vm_id=vm_id),
        RecoverVm(vm_id=vm_id),
        RequestVmStart(vm_id=vm_id, host_id=HOST_A),
        FailVm(vm_id=vm_id, reason="qemu crashed"),
        DestroyVm(vm_id=vm_id),
        RequestVmExpunge(vm_id=vm_id),
        MarkVmExpunged(vm_id=vm_id),
    ]:
        assert dispatch(uow, command).aggregate_id == vm_id
    vm = uow.get(VirtualMachine, vm_id)
    assert (vm.state, vm.last_host_id, vm.last_error) == ("Expunged", HOST_A, "qemu crashed")
    # commit also returns the zone's and template's pending events.
    vm_events = [e for e in uow.commit() if e.originator_id == vm_id]
    assert len(vm_events) == 18


def test_create_vm_with_given_id(uow, zone, template):
    given = uuid4()
    assert create_vm(uow, zone, template, id=given).aggregate_id == given
    assert uow.get(VirtualMachine, given).name == "web-1"


def test_create_vm_refuses_an_id_in_use(uow, zone, template):
    with pytest.raises(Conflict) as info:
        create_vm(uow, zone, template, id=template.id)
    assert info.value.field == "id"


def test_create_vm_needs_the_zone(uow, zone, template):
    with pytest.raises(NotFound) as info:
        create_vm(uow, zone, template, zone_id=uuid4())
    assert info.value.field == "zone_id"


def test_create_vm_refuses_a_disabled_zone(uow, zone, template):
    zone.disable()
    with pytest.raises(InvalidTransition):
        create_vm(uow, zone, template)


def test_create_vm_needs_the_template(uow, zone, template):
    with pytest.raises(NotFound) as info:
        create_vm(uow, zone, template, template_id=zone.id)
    assert info.value.field == "template_id"


def test_create_vm_needs_a_ready_template(uow, zone):
    template = add_template(uow, zone.id, ready=False)
    with pytest.raises(InvalidTransition) as info:
        create_vm(uow, zone, template)
    assert info.value.state == "Registered"


def test_create_vm_needs_a_template_of_its_zone(uow, zone):
    other = add_template(uow, uuid4())
    with pytest.raises(Validation) as info:
        create_vm(uow, zone, other)
    assert info.value.field == "template_id"


def test_create_vm_root_disk_must_hold_the_template(uow, zone):
    big = add_template(uow, zone.id, size_bytes=30 * GIB)
    with pytest.raises(Validation) as info:
        create_vm(uow, zone, big)
    assert info.value.field == "spec.root_disk_gb"


def test_domain_validation_still_applies_to_constructed_commands(uow, zone, template):
    with pytest.raises(Validation) as info:
        create_vm(uow, zone, template, spec=VmSpec(cpus=0, ram_mb=64, root_disk_gb=20))
    assert info.value.field == "spec.cpus"


def test_refused_command_records_nothing(uow, zone, template):
    vm_id = create_vm(uow, zone, template).aggregate_id
    uow.commit()
    with pytest.raises(InvalidTransition):
        dispatch(uow, MarkVmRunning(vm_id=vm_id))
    assert uow.commit() == []


def test_unknown_vm_is_not_found(uow, zone):
    with pytest.raises(NotFound):
        dispatch(uow, RebootVm(vm_id=zone.id))


def test_decoding_enforces_field_constraints():
    payload = {
        "account": "acme",
        "name": "web",
        "zone_id": str(uuid4()),
        "template_id": str(uuid4()),
        "spec": {"cpus": 0, "ram_mb": 2048, "root_disk_gb": 20},
    }
    with pytest.raises(msgspec.ValidationError, match=r"spec\.cpus"):
        msgspec.convert(payload, CreateVm, strict=False)
    payload["spec"]["cpus"] = 1
    assert msgspec.convert(payload, CreateVm, strict=False).spec.cpus == 1
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"vm_id": str(uuid4()), "reason": ""}, FailVm, strict=False)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"vm_id": str(uuid4()), "extra": 1}, RebootVm, strict=False)


def test_commands_round_trip_as_json():
    command = CreateVm(
        id=uuid4(),
        account="acme",
        name="web",
        zone_id=uuid4(),
        template_id=uuid4(),
        spec=SPEC,
        network_ids=(uuid4(), uuid4()),
        affinity_group="web",
    )
    assert msgspec.json.decode(msgspec.json.encode(command), type=CreateVm) == command
