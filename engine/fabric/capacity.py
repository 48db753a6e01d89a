"""Capacity arithmetic shared by hosts and storage pools.

Both reserve capacity per consumer on the aggregate itself, scale their raw
capacity by an overcommit factor, and carry placement tags.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal

import msgspec

from cloud_engine.engine.aggregate import require


class Reservation(msgspec.Struct, frozen=True):
    """The vCPUs and RAM one VM holds on a host."""

    cpus: int
    ram_mb: int


def overcommitted(amount: int, factor: float) -> Decimal:
    # Decimal, not float: 100 * 1.15 is 114.99999999999999 in binary floating
    # point, which would refuse the 115th vCPU.
    return Decimal(amount) * Decimal(repr(factor))


def require_overcommit(factor: float, field: str) -> None:
    require(
        math.isfinite(factor) and factor >= 1.0,
        f"{field} must be a finite number of at least 1.0",
        field=field,
    )


def normalise_tags(tags: Iterable[str], field: str = "tags") -> tuple[str, ...]:
    """Tags are a set; a sorted tuple keeps events deterministic and encodable."""
    cleaned = tuple(sorted({tag.strip() for tag in tags}))
    for tag in cleaned:
        require(bool(tag), f"{field} must not contain empty tags", field=field)
        require(len(tag) <= 64, f"{field} must be at most 64 characters each", field=field)
    return cleaned
