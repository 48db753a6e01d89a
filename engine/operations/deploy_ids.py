"""The ids a VM's deploy derives from the VM's id.

Derived, not drawn, so what the deploy made is found again from the VM
alone, without an index: the expunge releases the deploy's NICs, IPs and
volumes (engine/operations/release.py) long after the deploy ended.
"""

from __future__ import annotations

import uuid
from uuid import UUID

_DEPLOYS = UUID("9b7e2c1a-5f3d-4e8a-b6c2-1d0f4a3e7b95")


def operation_id(vm_id: UUID) -> UUID:
    """A VM's deploy operation: derived, so expunge finds what it made."""
    return uuid.uuid5(_DEPLOYS, str(vm_id))


def nic_id(op_id: UUID, index: int) -> UUID:
    return uuid.uuid5(op_id, f"nic:{index}")


def ip_id(op_id: UUID, index: int) -> UUID:
    return uuid.uuid5(op_id, f"ip:{index}")


def volume_id(op_id: UUID, index: int) -> UUID:
    return uuid.uuid5(op_id, f"volume:{index}")
