"""A VM's CD-ROM drive: the ISO template it holds, copied once into the
pool of the VM's root disk (`iso-<template id>.iso`, beside the NoCloud
seed, which the host reads as it reads the disks), and the drive's spec.

Every domain gets the drive, empty when no ISO is attached, so an ISO can
be inserted into a running guest (IDE drives cannot be hot-plugged; their
media can be changed). It is IDE hdd (the seed is hdc); a bootable ISO
goes first in the boot order, the root disk second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_engine.effectors.compute.spec import DiskSpec
from cloud_engine.effectors.handlers.base import shared
from cloud_engine.effectors.handlers.vm_plan import VmPlan
from cloud_engine.effectors.mapping import Unsupported, pool_spec

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor

TARGET = "hdd"


def iso_path(executor: Executor, plan: VmPlan) -> Path | None:
    """Where the VM's ISO is read from on its host (None: no ISO)."""
    iso_id = plan.vm.iso_id
    if iso_id is None:
        return None
    if not plan.disks:
        raise Unsupported(f"vm {plan.vm.id} has no root disk to keep its ISO beside")
    _, pool = plan.disks[0]
    return Path(pool_spec(executor.names, pool).path) / executor.names.iso(iso_id)


def ensure_iso(executor: Executor, plan: VmPlan) -> Path | None:
    """The VM's ISO in its root disk's pool: fetched into the image store
    if not there yet, then copied (whole, under a temporary name, once per
    pool whichever VM asks first)."""
    path = iso_path(executor, plan)
    if path is None or path.exists():
        return path
    source = plan.iso
    if source is None or source.template.id != plan.vm.iso_id:
        raise Unsupported(f"vm {plan.vm.id}: its ISO {plan.vm.iso_id} is not known")
    if source.template.format != "iso":
        raise Unsupported(f"template {source.template.id} is not an ISO")
    with shared("iso", str(path.parent), str(source.template.id)):
        if not path.exists():
            image = source.fetch()
            partial = path.with_name(path.name + ".partial")
            try:
                shutil.copyfile(image.path, partial)
                os.replace(partial, path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    return path


def cdrom(executor: Executor, plan: VmPlan, path: Path | None) -> DiskSpec:
    """The drive holding path (None: empty)."""
    bootable = path is not None and plan.iso is not None and plan.iso.template.bootable
    return DiskSpec(
        path=None if path is None else str(path),
        format="raw",
        target=TARGET,
        bus="ide",
        device="cdrom",
        boot_order=1 if bootable else None,
    )


def root_first_after_cdrom(disks: tuple[DiskSpec, ...], drive: DiskSpec) -> tuple[DiskSpec, ...]:
    """The disks with the root disk second in the boot order when the
    drive boots first (per-device orders replace the domain's default)."""
    if drive.boot_order is None or not disks:
        return (*disks, drive)
    root = DiskSpec(
        path=disks[0].path,
        format=disks[0].format,
        target=disks[0].target,
        bus=disks[0].bus,
        boot_order=2,
    )
    return (root, *disks[1:], drive)
