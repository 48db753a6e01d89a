"""ISOs over the API: registered as templates of format iso (a 422 naming
the field for what the engine refuses), deployed from when bootable, and
attached to a VM's CD-ROM and detached as operations; what they refuse is
a 4xx naming the field, with nothing recorded."""

from __future__ import annotations

import uuid
from typing import Any

from api_harness import Api, make_fabric, vm_body

from cloud_engine.engine.commands import CommandContext
from cloud_engine.engine.commands.compute import MarkVmRunning
from cloud_engine.engine.commands.operations import AdvanceOperation, PlaceOperation
from cloud_engine.engine.commands.storage import MarkTemplateDownloaded, MarkVolumeCreated
from cloud_engine.engine.operations import deploy_ids


def iso_body(zone: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "installer",
        "zone_id": zone,
        "url": "http://127.0.0.1:9/installer.iso",
        "format": "iso",
        "size_bytes": 20 << 20,
        "os_type": "linux",
        **extra,
    }


async def ready_iso(api: Api, zone: str, **extra: Any) -> str:
    registered = await api.post("/v1/templates", iso_body(zone, **extra))
    assert registered.status == 202, registered.body
    iso = registered.json()["resource_id"]
    assert (await api.post(f"/v1/templates/{iso}/download")).status == 202
    # What the effector reports once the image is in the image store.
    context = CommandContext(actor="test", request_id="t")
    api.service.execute(MarkTemplateDownloaded(template_id=uuid.UUID(iso)), context)
    return str(iso)


async def test_isos_are_registered_and_refused_by_field(api: Api) -> None:
    fabric = await make_fabric(api)
    iso = await ready_iso(api, fabric.zone, bootable=False)
    await api.project()
    shown = (await api.get(f"/v1/templates/{iso}", token=api.alice)).json()["attributes"]
    assert (shown["format"], shown["bootable"], shown["state"]) == ("iso", False, "Ready")
    for extra, field in [
        ({"format": "vmdk"}, "format"),
        ({"format": "qcow2", "bootable": False}, "bootable"),
        ({"url": "ftp://127.0.0.1/installer.iso"}, "url"),
        ({"bootable": "yes"}, "bootable"),
        ({"size_bytes": 0}, "size_bytes"),
    ]:
        refused = await api.post("/v1/templates", iso_body(fabric.zone, **extra))
        assert refused.status == 422, (extra, refused.body)
        assert refused.json()["field"] == field, (extra, refused.body)
    # A user may not register one.
    assert (await api.post("/v1/templates", iso_body(fabric.zone), token=api.alice)).status == 403
    # Nor deploy from a non-bootable one, nor make a volume of it.
    deploy = await api.post("/v1/vms", vm_body(fabric, template_id=iso), token=api.alice)
    assert deploy.status == 422 and deploy.json()["field"] == "template_id", deploy.body
    volume = {"name": "d", "zone_id": fabric.zone, "size_gb": 1, "template_id": iso}
    refused = await api.post("/v1/volumes", volume, token=api.alice)
    assert refused.status == 422 and refused.json()["field"] == "template_id", refused.body


def run_deploy(api: Api, fabric: Any, operation: str, vm: str) -> None:
    """What the engine and the effectors would record for a deploy."""
    context = CommandContext(actor="test", request_id="t")
    op = uuid.UUID(operation)
    for command in (
        PlaceOperation(
            operation_id=op,
            host_id=uuid.UUID(fabric.hosts[0]),
            pool_ids=(uuid.UUID(fabric.pools[0]),),
        ),
        MarkVolumeCreated(volume_id=deploy_ids.volume_id(op, 0)),
        AdvanceOperation(operation_id=op),
        MarkVmRunning(vm_id=uuid.UUID(vm)),
        AdvanceOperation(operation_id=op),
    ):
        api.service.execute(command, context)


async def test_attach_and_detach_iso_are_operations_on_the_vm(api: Api) -> None:
    fabric = await make_fabric(api)
    iso = await ready_iso(api, fabric.zone)
    deployed = await api.post("/v1/vms", vm_body(fabric, template_id=iso), token=api.alice)
    assert deployed.status == 202, deployed.body
    vm, deploy = deployed.json()["resource_id"], deployed.json()["operation_id"]
    await api.project()
    assert (await api.get(f"/v1/vms/{vm}", token=api.alice)).json()["attributes"]["iso_id"] == iso
    # The ISOs are listed apart (listIsos), and the VMs that hold one.
    isos = (await api.get("/v1/templates?format=iso", token=api.alice)).json()["items"]
    assert [t["id"] for t in isos] == [iso]
    holding = (await api.get(f"/v1/vms?iso_id={iso}", token=api.alice)).json()["items"]
    assert [v["id"] for v in holding] == [vm]
    attach, detach = f"/v1/vms/{vm}/attach-iso", f"/v1/vms/{vm}/detach-iso"
    # The deploy holds the VM.
    busy = await api.post(detach, token=api.alice)
    assert busy.status == 409 and deploy in busy.json()["detail"], busy.body
    run_deploy(api, fabric, deploy, vm)

    # Deployed from the ISO, the drive holds it: attaching another is refused.
    for body, field, status in [
        ({}, "iso_id", 422),
        ({"iso_id": "nope"}, "iso_id", 422),
        ({"iso_id": str(uuid.uuid4())}, "iso_id", 404),
        ({"iso_id": fabric.template}, "iso_id", 422),  # a disk image
        ({"iso_id": iso}, "iso_id", 422),  # attached already
    ]:
        refused = await api.post(attach, body, token=api.alice)
        assert refused.status == status, (body, refused.body)
        assert refused.json()["field"] == field, (body, refused.body)
    # Another account's VM is not found.
    assert (await api.post(attach, {"iso_id": iso}, token=api.bob)).status == 404
    assert (await api.post(detach, token=api.bob)).status == 404

    # The running VM's drive emptied: an operation waiting for the effector.
    ejected = await api.post(detach, token=api.alice)
    assert ejected.status == 202, ejected.body
    operation = ejected.json()["operation_id"]
    await api.project()
    shown = (await api.get(f"/v1/operations/{operation}", token=api.alice)).json()
    assert (shown["attributes"]["kind"], shown["attributes"]["status"]) == (
        "vm.detach_iso",
        "pending",
    )
    vm_now = (await api.get(f"/v1/vms/{vm}", token=api.alice)).json()["attributes"]
    assert (vm_now["iso_id"], vm_now["media_pending"]) == (None, True)
    events = (await api.get(f"/v1/vms/{vm}/events", token=api.alice)).json()["items"]
    assert events[-1]["type"] == "io.cloudengine.vm.iso_detached.v1", events[-1]
