"""Every aggregate type, under its public name.

The public name ("vm", "storage_pool") is part of the contract: it names the
Kafka topic and the CloudEvents type of every event of that aggregate, so it
must never change once published.
"""

from __future__ import annotations

import re
from typing import Any

from eventsourcing.domain import CanMutateAggregate

from engine.aggregate import Aggregate
from engine.fabric.cluster import Cluster
from engine.fabric.host import Host
from engine.fabric.image_store import ImageStore
from engine.fabric.physical_network import PhysicalNetwork
from engine.fabric.pod import Pod
from engine.fabric.storage_pool import StoragePool
from engine.fabric.zone import Zone
from engine.operations.affinity import AffinityGroup
from engine.operations.guard import ResourceGuard
from engine.operations.operation import Operation
from engine.virtual.ip_address import IpAddress
from engine.virtual.network import Network
from engine.virtual.network_rule import NetworkRule
from engine.virtual.nic import Nic
from engine.virtual.snapshot import Snapshot
from engine.virtual.template import Template
from engine.virtual.vm import VirtualMachine
from engine.virtual.volume import Volume

AGGREGATES: dict[str, type[Aggregate]] = {
    "zone": Zone,
    "pod": Pod,
    "cluster": Cluster,
    "host": Host,
    "storage_pool": StoragePool,
    "image_store": ImageStore,
    "physical_network": PhysicalNetwork,
    "vm": VirtualMachine,
    "volume": Volume,
    "template": Template,
    "snapshot": Snapshot,
    "network": Network,
    "nic": Nic,
    "ip_address": IpAddress,
    "network_rule": NetworkRule,
    "operation": Operation,
    "resource_guard": ResourceGuard,
    "affinity_group": AffinityGroup,
}

PUBLIC_NAMES: dict[type[Aggregate], str] = {cls: name for name, cls in AGGREGATES.items()}
# By class name, as command results name them (AggregateVersion.type).
PUBLIC_BY_CLASS_NAME: dict[str, str] = {cls.__name__: name for name, cls in AGGREGATES.items()}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def event_classes(cls: type[Aggregate]) -> dict[str, type[Any]]:
    """The aggregate's own event classes by public event name ("started")."""
    found: dict[str, type[Any]] = {}
    for attr, value in vars(cls).items():
        if (
            isinstance(value, type)
            and issubclass(value, CanMutateAggregate)
            and attr != "Event"
            and attr[0].isupper()
        ):
            found[snake(attr)] = value
    return dict(sorted(found.items()))
