"""Which libvirt errors the effector waits out and which it reports."""

from __future__ import annotations

import libvirt

from cloud_engine.effectors.hypervisor import HypervisorError


def error(code: int, message: str) -> HypervisorError:
    return HypervisorError("qemu:///system", "create volume", code, message)


def test_a_pool_busy_with_another_volume_is_waited_out() -> None:
    # libvirt's words when a pool still builds a volume (seen creating a
    # root and a data disk in one pool at once).
    busy = "pool 'shared' has asynchronous jobs running."
    assert error(libvirt.VIR_ERR_OPERATION_INVALID, busy).transient


def test_other_invalid_operations_are_reported_at_once() -> None:
    inactive = "storage pool 'shared' is not active"
    assert not error(libvirt.VIR_ERR_OPERATION_INVALID, inactive).transient
    assert not error(libvirt.VIR_ERR_NO_STORAGE_VOL, "no storage vol").transient


def test_a_dropped_connection_is_waited_out() -> None:
    assert error(libvirt.VIR_ERR_RPC, "connection reset").transient
