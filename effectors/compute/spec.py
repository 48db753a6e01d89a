"""What the compute driver is asked to build, and what it observes on a host."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import msgspec

PowerState = Literal["absent", "running", "paused", "shutoff", "crashed", "other"]
# libvirt's domain type: qemu runs guests under TCG (emulated, anywhere),
# kvm on the host's /dev/kvm (the effector's setting, see Executor).
DomainType = Literal["qemu", "kvm"]


class DiskSpec(msgspec.Struct, frozen=True, kw_only=True):
    path: str | None  # None: a CD-ROM drive with no media
    format: str = "qcow2"
    target: str = "vda"
    bus: str = "virtio"
    device: Literal["disk", "cdrom"] = "disk"  # a cdrom is read-only
    # Its place in the boot order (1 first). Set on any disk, it replaces
    # the domain's default (the first hard disk).
    boot_order: int | None = None


class NicSpec(msgspec.Struct, frozen=True, kw_only=True):
    mac: str
    network: str  # libvirt network name
    vlan: int | None = None
    model: str = "virtio"


class DomainSpec(msgspec.Struct, frozen=True, kw_only=True):
    uuid: UUID  # the VM id; libvirt's domain UUID is set to it
    name: str
    vcpus: int
    memory_mb: int
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    domain_type: DomainType = "qemu"


class DomainState(msgspec.Struct, frozen=True, kw_only=True):
    uuid: UUID
    exists: bool
    state: PowerState
    name: str | None = None


def absent_domain(uuid: UUID) -> DomainState:
    """What is observed of a domain its host does not have."""
    return DomainState(uuid=uuid, exists=False, state="absent")


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    changed: bool
    state: DomainState
