"""What the storage driver is asked for (specs) and what it saw (states)."""

from __future__ import annotations

from typing import Literal

import msgspec

# The kinds a pool backend exists for (pools.BACKENDS); NFS, iSCSI and RBD
# are added by widening this Literal and registering a backend.
PoolKind = Literal["dir"]
CloneMode = Literal["backing", "full"]


class PoolSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: PoolKind = "dir"
    path: str


class PoolState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    exists: bool
    active: bool
    path: str | None = None


class VolumeSpec(msgspec.Struct, frozen=True, kw_only=True):
    pool: str
    name: str
    size_bytes: int
    # A qcow2 (or raw) image file on the host to start the volume from.
    template_path: str | None = None
    # "backing": a thin qcow2 overlay on the template (fast, the template must
    # stay); "full": a standalone copy of the template.
    clone: CloneMode = "backing"


class VolumeState(msgspec.Struct, frozen=True, kw_only=True):
    pool: str
    name: str
    exists: bool
    path: str | None = None
    capacity_bytes: int = 0
    format: str | None = None
    backing_path: str | None = None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    changed: bool
    volume: VolumeState
