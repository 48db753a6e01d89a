"""An account's limits and what it holds against them.

Limits (vms, vcpus, ram_mb, volume_gb, public_ips) are set by
administrators. Every resource that counts holds its share under its own id
(a VM: one vm, its vCPUs and RAM; a volume: its GiB; an allocated IP: one
public IP), taken and given back by engine/quotas.py in the same
transaction as the events that make, grow or remove the resource. Two
commands that would together pass a limit both write this aggregate, so
the store's version check lets one commit and makes the other run again on
the new usage, where it is refused: a limit is never exceeded, under any
concurrency, on any number of processes.
"""

from __future__ import annotations

import uuid
from typing import Final
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.errors import QuotaExceeded

LIMITS: Final[tuple[str, ...]] = ("vms", "vcpus", "ram_mb", "volume_gb", "public_ips")
_ACCOUNTS = UUID("0b6f4c1e-8d2a-4e57-9c3b-6a1d5e7f9b20")


def account_id(name: str) -> UUID:
    return uuid.uuid5(_ACCOUNTS, name)


class Account(Aggregate):
    entity = "account"

    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.account = name  # the common column of every read model
        self.limits: dict[str, int] = {}
        self.used: dict[str, int] = dict.fromkeys(LIMITS, 0)
        self.holds: dict[str, dict[str, int]] = {}  # resource id -> its share

    @property
    def state(self) -> str:  # type: ignore[override]
        return "Limited" if self.limits else "Unlimited"

    def set_limits(self, limits: dict[str, int | None]) -> None:
        """Given limits replace the old ones; None lifts one. A limit below
        the current usage is allowed (nothing new fits until usage drops)."""
        merged = dict(self.limits)
        for name, value in limits.items():
            if name not in LIMITS:
                raise ValueError(name)
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        if merged != self.limits:
            self._limits_set(dict(sorted(merged.items())))

    def hold(self, resource_id: UUID, share: dict[str, int]) -> None:
        """The resource's share becomes `share` (growing it is checked
        against the limits; shrinking never is)."""
        key = str(resource_id)
        old = self.holds.get(key, {})
        if old == share:
            return
        for name in LIMITS:
            grow = share.get(name, 0) - old.get(name, 0)
            limit = self.limits.get(name)
            if grow > 0 and limit is not None and self.used[name] + grow > limit:
                raise QuotaExceeded(
                    f"account {self.name}: {name} limit {limit} reached"
                    f" ({self.used[name]} used, {grow} more asked)",
                    field=name,
                    owner=self.id,
                )
        self._held(resource_id, {k: v for k, v in share.items() if v})

    def release(self, resource_id: UUID) -> None:
        if str(resource_id) in self.holds:
            self._released(resource_id)

    @event("LimitsSet")
    def _limits_set(self, limits: dict[str, int]) -> None:
        self.limits = limits

    @event("Held")
    def _held(self, resource_id: UUID, share: dict[str, int]) -> None:
        old = self.holds.get(str(resource_id), {})
        self.used = {n: self.used[n] - old.get(n, 0) + share.get(n, 0) for n in LIMITS}
        self.holds = {**self.holds, str(resource_id): share}

    @event("Released")
    def _released(self, resource_id: UUID) -> None:
        old = self.holds.get(str(resource_id), {})
        self.used = {n: self.used[n] - old.get(n, 0) for n in LIMITS}
        self.holds = {k: v for k, v in self.holds.items() if k != str(resource_id)}
