"""Every aggregate type, under its public name.

The public name ("vm", "storage_pool") is part of the contract: it names the
Kafka topic and the CloudEvents type of every event of that aggregate, so it
must never change once published.
"""

from __future__ import annotations

import re
from typing import Any

from eventsourcing.domain import CanMutateAggregate

from cloud_engine.engine import topics
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.fabric.cluster import Cluster
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fabric.image_store import ImageStore
from cloud_engine.engine.fabric.physical_network import PhysicalNetwork
from cloud_engine.engine.fabric.pod import Pod
from cloud_engine.engine.fabric.storage_pool import StoragePool
from cloud_engine.engine.fabric.zone import Zone
from cloud_engine.engine.operations.affinity import AffinityGroup
from cloud_engine.engine.operations.guard import ResourceGuard
from cloud_engine.engine.operations.operation import Operation
from cloud_engine.engine.virtual.account import Account
from cloud_engine.engine.virtual.ip_address import IpAddress
from cloud_engine.engine.virtual.network import Network
from cloud_engine.engine.virtual.network_rule import NetworkRule
from cloud_engine.engine.virtual.nic import Nic
from cloud_engine.engine.virtual.snapshot import Snapshot
from cloud_engine.engine.virtual.template import Template
from cloud_engine.engine.virtual.vm import VirtualMachine
from cloud_engine.engine.virtual.volume import Volume

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
    "account": Account,
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


def _classes() -> list[type]:
    found: list[type] = []
    for cls in AGGREGATES.values():
        found.append(cls)
        found.extend(event_classes(cls).values())
    return found


# Before any of them is written or read (the store, the mapper and the
# relay import this module).
topics.register(_classes())
topics.register_layer()
