"""The resource types the API serves, where each is read from and who owns it.

One entry per collection: its read-model type (table rm_<type>), who may
read it (fabric: admins; catalog: everyone; tenant: the owning account and
admins), how the owning account is found (a column of its own, or its
parent's: a NIC belongs to its VM's account) and the filters its list
endpoint takes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from cloud_engine.api.auth import Access
from cloud_engine.api.fields import NO_NUL

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

FilterKind = Literal["uuid", "text"]


class Filter(msgspec.Struct, frozen=True):
    name: str  # the query parameter
    kind: FilterKind
    # A column of the read model; None: the field `name` of its data.
    column: str | None = None


class Parent(msgspec.Struct, frozen=True):
    """The resource whose account owns this one, named by a field of its data."""

    type: str
    field: str


class Child(msgspec.Struct, frozen=True, kw_only=True):
    """Rows of another read model shown inside each resource, as a list
    attribute: a VM's NICs with their addresses, what a user asks first.
    Read in the same query as the resource (api/queries.py), so a list page
    costs one round trip; the child's `field` (its parent's id) is indexed
    for its own list endpoint (projections.readmodel.LIST_KEYS)."""

    attribute: str  # the list's name among the resource's attributes
    type: str  # the child's read model
    field: str  # the child's data field naming the parent
    shown: tuple[str, ...]  # the child's data fields in each entry (besides id)
    hidden_states: tuple[str, ...] = ()  # children in these states are gone


class ResourceType(msgspec.Struct, frozen=True, kw_only=True):
    collection: str  # URL segment: "storage-pools"
    type: str  # public aggregate name: "storage_pool"
    title: str  # for people: "storage pool"
    access: Access
    parent: Parent | None = None
    filters: tuple[Filter, ...] = ()
    children: tuple[Child, ...] = ()

    @property
    def owned(self) -> bool:
        return self.access == "tenant"


def _data(*names: str) -> tuple[Filter, ...]:
    return tuple(Filter(n, "uuid") for n in names)


_STATE = Filter("state", "text", "state")
_NAME = Filter("name", "text", "name")
_ZONE = Filter("zone_id", "uuid", "zone_id")
_ACCOUNT = Filter("account", "text", "account")
_PLACED = (_STATE, _NAME, _ZONE)

_VM_CHILDREN = (
    Child(
        attribute="nics",
        type="nic",
        field="vm_id",
        # Not the NIC's state: nothing plugs a NIC yet (PlugNic has no
        # sender), so every NIC of a running VM would say "Allocated".
        shown=("network_id", "mac", "address", "device_id"),
        hidden_states=("Released",),
    ),
    Child(
        attribute="volumes",
        type="volume",
        field="vm_id",
        shown=("name", "kind", "size_bytes", "pool_id", "device_id", "state"),
    ),
)

TYPES: tuple[ResourceType, ...] = (
    ResourceType(collection="zones", type="zone", title="zone", access="catalog",
                 filters=(_STATE, _NAME)),
    ResourceType(collection="pods", type="pod", title="pod", access="fabric",
                 filters=_PLACED),
    ResourceType(collection="clusters", type="cluster", title="cluster", access="fabric",
                 filters=(*_PLACED, *_data("pod_id"))),
    ResourceType(collection="hosts", type="host", title="host", access="fabric",
                 filters=(*_PLACED, *_data("pod_id", "cluster_id"))),
    ResourceType(collection="storage-pools", type="storage_pool", title="storage pool",
                 access="fabric", filters=(*_PLACED, *_data("cluster_id"))),
    ResourceType(collection="image-stores", type="image_store", title="image store",
                 access="fabric", filters=_PLACED),
    ResourceType(collection="physical-networks", type="physical_network",
                 title="physical network", access="fabric", filters=_PLACED),
    # format=iso lists the ISOs (CloudStack's listIsos).
    ResourceType(collection="templates", type="template", title="template", access="catalog",
                 filters=(*_PLACED, Filter("format", "text"))),
    # iso_id: the VMs whose CD-ROM holds that ISO.
    ResourceType(collection="vms", type="vm", title="VM", access="tenant",
                 filters=(*_PLACED, _ACCOUNT, *_data("host_id", "template_id", "iso_id")),
                 children=_VM_CHILDREN),
    ResourceType(collection="volumes", type="volume", title="volume", access="tenant",
                 filters=(*_PLACED, _ACCOUNT, *_data("vm_id", "pool_id"))),
    ResourceType(collection="snapshots", type="snapshot", title="snapshot", access="tenant",
                 parent=Parent("volume", "volume_id"),
                 filters=(_STATE, _NAME, _ACCOUNT, *_data("volume_id"))),
    ResourceType(collection="networks", type="network", title="network", access="tenant",
                 filters=(*_PLACED, _ACCOUNT, *_data("physical_network_id"))),
    ResourceType(collection="nics", type="nic", title="NIC", access="tenant",
                 parent=Parent("vm", "vm_id"),
                 filters=(_STATE, _ACCOUNT, *_data("vm_id", "network_id"))),
    ResourceType(collection="ip-addresses", type="ip_address", title="IP address",
                 access="tenant", parent=Parent("network", "network_id"),
                 filters=(_STATE, _ACCOUNT, *_data("network_id", "owner_id"))),
    ResourceType(collection="network-rules", type="network_rule", title="network rule",
                 access="tenant", parent=Parent("network", "network_id"),
                 filters=(_STATE, _ACCOUNT, *_data("network_id"))),
    ResourceType(collection="operations", type="operation", title="operation",
                 access="tenant",
                 filters=(_STATE, _ACCOUNT, Filter("kind", "text"), *_data("resource_id"))),
)  # fmt: skip

BY_TYPE: dict[str, ResourceType] = {t.type: t for t in TYPES}


# Query parameters ----------------------------------------------------------------

Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]


class ListQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Paging parameters every list takes; each type's filters are added
    to a subclass (query_type), so an unknown parameter is refused."""

    limit: Limit = DEFAULT_LIMIT
    cursor: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None


class EventQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Paging of a resource's history: the events after a version."""

    after_version: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Limit = MAX_LIMIT


class StateQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Time travel: the resource as it was after a version, or at a time
    (after every event recorded at or before it); with both, the earlier of
    the two; with neither, as it is now (from the log, never behind)."""

    version: Annotated[int, msgspec.Meta(ge=1, le=2**62)] | None = None
    at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


def _filter_type(kind: FilterKind) -> Any:
    if kind == "uuid":
        return UUID | None
    # No NUL: PostgreSQL refuses it in a text parameter (a 500, not a 400).
    return Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_NUL)] | None


def _query_type(resource: ResourceType) -> type[ListQuery]:
    fields = [(f.name, _filter_type(f.kind), None) for f in resource.filters]
    name = "".join(p.capitalize() for p in resource.type.split("_")) + "Query"
    made = msgspec.defstruct(name, fields, bases=(ListQuery,), frozen=True, kw_only=True)
    assert issubclass(made, ListQuery)
    return made


QUERY_TYPES: dict[str, type[ListQuery]] = {t.type: _query_type(t) for t in TYPES}


def filter_values(resource: ResourceType, query: ListQuery) -> list[tuple[Filter, object]]:
    """The filters a query sets, in the table's order."""
    chosen = ((f, getattr(query, f.name)) for f in resource.filters)
    return [(f, value) for f, value in chosen if value is not None]
