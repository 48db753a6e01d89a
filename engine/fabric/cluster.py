"""Cluster: a group of hosts in a pod that run the same hypervisor."""

from __future__ import annotations

from typing import Literal, get_args
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import require, require_name
from cloud_engine.engine.fabric.lifecycle import Switchable

ClusterState = Literal["Enabled", "Disabled"]
Hypervisor = Literal["kvm"]


class Cluster(Switchable):
    entity = "cluster"

    @event("Created")
    def __init__(self, zone_id: UUID, pod_id: UUID, name: str, hypervisor: Hypervisor) -> None:
        self.zone_id = zone_id
        self.pod_id = pod_id
        self.name = name
        self.hypervisor: Hypervisor = hypervisor
        self.state: ClusterState = "Enabled"

    @classmethod
    def create(
        cls,
        *,
        zone_id: UUID,
        pod_id: UUID,
        name: str,
        hypervisor: Hypervisor = "kvm",
        id: UUID | None = None,
    ) -> Cluster:
        require_name(name)
        supported = get_args(Hypervisor)
        require(
            hypervisor in supported,
            f"hypervisor must be one of {', '.join(supported)}",
            field="hypervisor",
        )
        cluster: Cluster = cls._new(
            id=id, zone_id=zone_id, pod_id=pod_id, name=name, hypervisor=hypervisor
        )
        return cluster
