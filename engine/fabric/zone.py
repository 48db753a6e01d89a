"""Zone: the top of the fabric (a data center or an availability zone)."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.fabric.lifecycle import Switchable

ZoneState = Literal["Enabled", "Disabled"]
# CloudStack's two zone models: Advanced (isolated guest networks) or Basic (flat).
NetworkType = Literal["Advanced", "Basic"]


class Zone(Switchable):
    entity = "zone"

    class Created(Aggregate.Created):
        """v2 added network_type; zones created before were all Advanced."""

        name: str
        description: str
        network_type: NetworkType

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["network_type"] = "Advanced"

    @event(Created)
    def __init__(self, name: str, description: str, network_type: NetworkType) -> None:
        self.name = name
        self.description = description
        self.network_type = network_type
        self.state: ZoneState = "Enabled"

    @classmethod
    def create(
        cls,
        name: str,
        description: str = "",
        network_type: NetworkType = "Advanced",
        id: UUID | None = None,
    ) -> Zone:
        require_name(name)
        require(
            network_type in ("Advanced", "Basic"),
            "network_type must be Advanced or Basic",
            field="network_type",
        )
        zone: Zone = cls._new(id=id, name=name, description=description, network_type=network_type)
        return zone
