"""Affinity groups: where a group's VMs run, checked where VMs are placed.

The planner reads the group's hosts, but two VMs of one group placed at the
same moment would both read the group before either was placed. So the
place step admits the VM into the group aggregate in its own transaction:
a strict rule is enforced there, atomically, and the loser is planned
again. The group's kind and strictness are set by its first member.
"""

from __future__ import annotations

import uuid
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.errors import PlacementRefused
from cloud_engine.engine.unit_of_work import UnitOfWork

_GROUPS = UUID("5d2f8a61-7c3e-4b9d-a0e4-2f6b1c8d9e37")


def group_id(account: str, name: str) -> UUID:
    return uuid.uuid5(_GROUPS, f"{account}/{name}")


class AffinityGroup(Aggregate):
    entity = "affinity group"

    @event("Created")
    def __init__(self, account: str, name: str, kind: str, strict: bool) -> None:
        self.account = account
        self.name = name
        self.kind = kind
        self.strict = strict
        self.members: dict[UUID, UUID] = {}  # vm id -> host id

    @property
    def state(self) -> str:  # type: ignore[override]
        return "Active" if self.members else "Empty"

    def hosts_of_others(self, vm_id: UUID) -> set[UUID]:
        return {host for vm, host in self.members.items() if vm != vm_id}

    def admit(self, vm_id: UUID, host_id: UUID) -> None:
        if self.members.get(vm_id) == host_id:
            return
        others = self.hosts_of_others(vm_id)
        if self.strict and self.kind == "anti-affinity" and host_id in others:
            raise PlacementRefused(
                f"host {host_id} already runs a member of anti-affinity group {self.name}",
                field="host_id",
            )
        if self.strict and self.kind == "affinity" and others and host_id not in others:
            raise PlacementRefused(
                f"affinity group {self.name} runs on other hosts than {host_id}", field="host_id"
            )
        self._admitted(vm_id, host_id)

    def restore(self, vm_id: UUID, host_id: UUID) -> None:
        """Put a member back where it runs (a migration failed): no rule is
        checked, it was admitted there before."""
        if vm_id in self.members and self.members[vm_id] != host_id:
            self._admitted(vm_id, host_id)

    def leave(self, vm_id: UUID) -> None:
        if vm_id in self.members:
            self._left(vm_id)

    @event("Admitted")
    def _admitted(self, vm_id: UUID, host_id: UUID) -> None:
        self.members = {**self.members, vm_id: host_id}

    @event("Left")
    def _left(self, vm_id: UUID) -> None:
        self.members = {k: v for k, v in self.members.items() if k != vm_id}


def admit(
    uow: UnitOfWork, account: str, name: str, kind: str, strict: bool, vm_id: UUID, host_id: UUID
) -> None:
    gid = group_id(account, name)
    group = uow.find(AffinityGroup, gid)
    if group is None:
        group = AffinityGroup._new(id=gid, account=account, name=name, kind=kind, strict=strict)
        uow.add(group)
    group.admit(vm_id, host_id)


def leave(uow: UnitOfWork, account: str, name: str | None, vm_id: UUID) -> None:
    if name is None:
        return
    group = uow.find(AffinityGroup, group_id(account, name))
    if group is not None:
        group.leave(vm_id)
