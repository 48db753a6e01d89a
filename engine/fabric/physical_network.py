"""PhysicalNetwork: the wire a zone's guest networks ride on, and its VLAN/VXLAN tags.

Tags are handed out lowest-first so allocation is deterministic (replays and
tests see the same tags). The lowest free tag is kept up to date by the event
methods, so allocating never scans the (up to 16M wide) free part of the range.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args
from uuid import UUID

import msgspec
from eventsourcing.domain import event

from cloud_engine.engine.aggregate import require, require_name
from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition, Validation
from cloud_engine.engine.fabric.lifecycle import Switchable

PhysicalNetworkState = Literal["Enabled", "Disabled"]
Isolation = Literal["VLAN", "VXLAN", "none"]

# 0 and 4095 are reserved by 802.1Q; VXLAN VNIs are 24 bits and 0 is avoided.
TAG_LIMITS: dict[str, int] = {"VLAN": 4094, "VXLAN": 16_777_215}


class TagRange(msgspec.Struct, frozen=True):
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, tag: int) -> bool:
        return self.first <= tag <= self.last


def _require_tag_range(isolation: Isolation, tag_range: TagRange | None) -> None:
    if isolation == "none":
        require(tag_range is None, "isolation none takes no tag_range", field="tag_range")
        return
    if tag_range is None:
        raise Validation(f"{isolation} needs a tag_range", field="tag_range")
    limit = TAG_LIMITS[isolation]
    require(
        1 <= tag_range.first <= tag_range.last <= limit,
        f"{isolation} tag_range must satisfy 1 <= first <= last <= {limit}",
        field="tag_range",
    )


class PhysicalNetwork(Switchable):
    entity = "physical network"

    @event("Created")
    def __init__(
        self, zone_id: UUID, name: str, isolation: Isolation, tag_range: TagRange | None
    ) -> None:
        self.zone_id = zone_id
        self.name = name
        self.isolation: Isolation = isolation
        self.tag_range = tag_range
        self.state: PhysicalNetworkState = "Enabled"
        self._allocated: dict[int, UUID] = {}
        self._tags_by_owner: dict[UUID, int] = {}
        # Invariant: every tag in [first, _lowest_free) is allocated.
        self._lowest_free = tag_range.first if tag_range is not None else 0

    @classmethod
    def create(
        cls,
        *,
        zone_id: UUID,
        name: str,
        isolation: Isolation,
        tag_range: TagRange | None = None,
        id: UUID | None = None,
    ) -> PhysicalNetwork:
        require_name(name)
        require(
            isolation in get_args(Isolation),
            "isolation must be one of VLAN, VXLAN, none",
            field="isolation",
        )
        _require_tag_range(isolation, tag_range)
        network: PhysicalNetwork = cls._new(
            id=id, zone_id=zone_id, name=name, isolation=isolation, tag_range=tag_range
        )
        return network

    # Tags --------------------------------------------------------------------

    @property
    def allocated_tags(self) -> Mapping[int, UUID]:
        return MappingProxyType(self._allocated)

    @property
    def free_tag_count(self) -> int:
        return 0 if self.tag_range is None else self.tag_range.size - len(self._allocated)

    def tag_of(self, owner_id: UUID) -> int | None:
        return self._tags_by_owner.get(owner_id)

    def allocate_tag(self, owner_id: UUID) -> int:
        """Give owner_id the lowest free tag and return it."""
        if self.tag_range is None:
            raise InvalidTransition(
                f"{self.entity} {self.id}", self.state, "allocate a tag without isolation on"
            )
        self.require_state(["Enabled"], "allocate a tag on")
        held = self._tags_by_owner.get(owner_id)
        if held is not None:
            raise Conflict(f"{owner_id} already holds tag {held} on {self.entity} {self.id}")
        if self.free_tag_count == 0:
            raise CapacityExceeded(
                f"all {self.tag_range.size} {self.isolation} tags of {self.entity} "
                f"{self.id} are allocated"
            )
        tag = self._lowest_free
        self._tag_allocated(tag=tag, owner_id=owner_id)
        return tag

    def release_tag(self, tag: int, owner_id: UUID) -> None:
        # Allowed while disabled so networks can still be torn down.
        if self._allocated.get(tag) != owner_id:
            raise Conflict(
                f"tag {tag} is not held by {owner_id} on {self.entity} {self.id}", field="tag"
            )
        self._tag_released(tag=tag, owner_id=owner_id)

    @event("TagAllocated")
    def _tag_allocated(self, tag: int, owner_id: UUID) -> None:
        self._allocated[tag] = owner_id
        self._tags_by_owner[owner_id] = tag
        # The walk only crosses allocated tags (never the free part of the
        # range), and works for any tag, not only the lowest free one.
        while self._lowest_free in self._allocated:
            self._lowest_free += 1

    @event("TagReleased")
    def _tag_released(self, tag: int, owner_id: UUID) -> None:
        del self._allocated[tag]
        del self._tags_by_owner[owner_id]
        self._lowest_free = min(self._lowest_free, tag)
