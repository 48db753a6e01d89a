"""The operation kinds, by name: the one table every dispatch goes through
(engine/commands/operations.py, orchestration/placement.py).

A new kind is one module implementing OperationKind (engine/operations/
kind.py) and one line here; clients can start it once its name is in the
command's Literal (VmOperationKind or VolumeOperationKind), which is the
published contract (tests/unit/test_operation_kinds.py checks both agree).
"""

from __future__ import annotations

from typing import Any, Final

from cloud_engine.engine.errors import Validation
from cloud_engine.engine.operations.host_ha import HostHa
from cloud_engine.engine.operations.host_maintenance import HostMaintenance
from cloud_engine.engine.operations.kind import OperationKind
from cloud_engine.engine.operations.pool_maintenance import PoolMaintenance
from cloud_engine.engine.operations.vm_deploy import VmDeploy
from cloud_engine.engine.operations.vm_destroy import VmDestroy
from cloud_engine.engine.operations.vm_expunge import VmExpunge
from cloud_engine.engine.operations.vm_iso import VmAttachIso, VmDetachIso
from cloud_engine.engine.operations.vm_migrate import VmMigrate
from cloud_engine.engine.operations.vm_reboot import VmReboot
from cloud_engine.engine.operations.vm_recover import VmRecover
from cloud_engine.engine.operations.vm_scale import VmScale
from cloud_engine.engine.operations.vm_start import VmStart
from cloud_engine.engine.operations.vm_stop import VmStop
from cloud_engine.engine.operations.volume_attach import VolumeAttach
from cloud_engine.engine.operations.volume_detach import VolumeDetach
from cloud_engine.engine.operations.volume_migrate import VolumeMigrate
from cloud_engine.engine.operations.volume_resize import VolumeResize
from cloud_engine.engine.operations.volume_revert import VolumeRevert
from cloud_engine.engine.operations.volume_snapshot import VolumeSnapshot

# Any: each kind takes its own resource type (a VM, a volume); the command
# handlers pass the aggregate the kind's resource_type names.
KINDS: Final[dict[str, OperationKind[Any]]] = {
    kind.name: kind
    for kind in (
        VmDeploy(),
        VmStart(),
        VmStop(),
        VmReboot(),
        VmDestroy(),
        VmRecover(),
        VmExpunge(),
        VmMigrate(),
        VmScale(),
        VmAttachIso(),
        VmDetachIso(),
        VolumeAttach(),
        VolumeDetach(),
        VolumeResize(),
        VolumeSnapshot(),
        VolumeRevert(),
        VolumeMigrate(),
        HostMaintenance(),
        HostHa(),
        PoolMaintenance(),
    )
}


def kind_of(name: str) -> OperationKind[Any]:
    """The kind of that name; an operation of an unknown kind is refused."""
    kind = KINDS.get(name)
    if kind is None:
        raise Validation(f"unknown operation kind {name!r}", field="operation_id")
    return kind
