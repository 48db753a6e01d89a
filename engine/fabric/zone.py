"""Zone: the top of the fabric (a data center or an availability zone)."""

from __future__ import annotations

from typing import Literal

from eventsourcing.domain import event

from engine.aggregate import Aggregate, require_name

ZoneState = Literal["Enabled", "Disabled"]


class Zone(Aggregate):
    entity = "zone"

    @event("Created")
    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.state: ZoneState = "Enabled"

    @classmethod
    def create(cls, name: str, description: str = "") -> Zone:
        require_name(name)
        return cls(name=name, description=description)

    def enable(self) -> None:
        self.require_state(["Disabled"], "enable")
        self._enabled()

    def disable(self) -> None:
        self.require_state(["Enabled"], "disable")
        self._disabled()

    @event("Enabled")
    def _enabled(self) -> None:
        self.state = "Enabled"

    @event("Disabled")
    def _disabled(self) -> None:
        self.state = "Disabled"
