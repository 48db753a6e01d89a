"""A VM Running on a host, reached through the engine's commands with the
effector's answers and the operation manager's steps sent by hand (no
effector, no orchestration): the starting point of the automation tests."""

from __future__ import annotations

import uuid
from uuid import UUID

from cloud_engine.engine.commands.compute import MarkVmRunning
from cloud_engine.engine.commands.operations import AdvanceOperation, DeployVm, PlaceOperation
from cloud_engine.engine.commands.storage import MarkVolumeCreated
from cloud_engine.engine.operations import deploy_ids
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.virtual.vm import VmSpec
from tests.fabric import Fabric


async def deploy_running(
    service: CommandService, fabric: Fabric[UUID], host: UUID, name: str, *, ha: bool
) -> UUID:
    """The id of a new VM of account acme, deployed onto host and Running
    there, its root volume on the fabric's pool."""
    sent = await service.execute_async(
        DeployVm(
            account="acme",
            name=name,
            zone_id=fabric.zone,
            template_id=fabric.template,
            spec=VmSpec(cpus=1, ram_mb=512, root_disk_gb=1),
            host_id=host,
            ha=ha,
        )
    )
    deploy, vm_id = sent.aggregate_id, uuid.UUID(str(sent.value))
    await service.execute_async(
        PlaceOperation(operation_id=deploy, host_id=host, pool_ids=(fabric.pool,))
    )
    await service.execute_async(MarkVolumeCreated(volume_id=deploy_ids.volume_id(deploy, 0)))
    await service.execute_async(AdvanceOperation(operation_id=deploy))
    await service.execute_async(MarkVmRunning(vm_id=vm_id))
    await service.execute_async(AdvanceOperation(operation_id=deploy))
    return vm_id
