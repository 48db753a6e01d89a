"""The engine's view of what should exist, read from its read models.

Effectors keep no database: a work item names an aggregate and the version
that asked for the work, and everything else (a VM's size, host, disks and
NICs; a volume's pool and size) is read from the read models, waiting (with
a bound) until they reflect at least that version. The reconciler compares
the same view with what the hypervisors run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from cloud_engine.infra.tables import read_model
from cloud_engine.projections import readmodel

T = TypeVar("T", bound=msgspec.Struct)


class NotProjectedYet(TimeoutError):
    """The read model has not reached the version yet; retried by the
    consumer base like any outage (TimeoutError)."""


class VmSize(msgspec.Struct, frozen=True):
    cpus: int
    ram_mb: int
    root_disk_gb: int


class VmView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    name: str
    zone_id: UUID
    state: str
    spec: VmSize
    host_id: UUID | None = None
    pool_id: UUID | None = None
    migration_target_id: UUID | None = None
    last_host_id: UUID | None = None  # where a stopped or destroyed VM ran
    # A stopped VM migrating (offline): its disks are on last_host_id's side.
    migrating_stopped: bool = False
    # In Error after a start or stop that timed out: converges to the domain.
    unsettled: bool = False
    # Attached volumes by device number (JSON object keys), at this version.
    disks: dict[str, UUID] = {}
    # The guest's first-boot data: base64 user data and SSH keys (a seed).
    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()
    iso_id: UUID | None = None  # the ISO template in its CD-ROM drive


class HostView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    name: str
    zone_id: UUID
    state: str
    libvirt_uri: str
    cluster_id: UUID | None = None
    # Where other hosts reach it (live migration, VXLAN); None: not registered.
    underlay_address: str | None = None
    underlay_device: str | None = None
    # Up, Suspect or Down as the engine recorded it (automation decides).
    liveness: str = "Up"
    # Down and fenced: its power was cut, so it runs no guest, whether its
    # libvirtd answers or not.
    fenced: bool = False


class PoolView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    zone_id: UUID
    state: str
    url: str
    scope: str = "cluster"
    host_id: UUID | None = None  # scope "host": the only host that reaches it
    cluster_id: UUID | None = None  # scope "cluster": whose hosts reach it

    @property
    def shared(self) -> bool:
        """Every host of its cluster (or zone) sees the same files."""
        return self.host_id is None


class VolumeView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    zone_id: UUID
    state: str
    size_bytes: int
    pool_id: UUID | None = None
    vm_id: UUID | None = None
    device_id: int | None = None
    resize_to: int | None = None
    reverting_to: UUID | None = None
    template_id: UUID | None = None
    host_id: UUID | None = None  # the host asked to create it
    moving_to: UUID | None = None  # the pool a pending move copies it to
    moving_host_id: UUID | None = None  # ... from this host (None: any of the pool's)


class TemplateView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    zone_id: UUID
    state: str
    url: str
    format: str
    checksum: str | None = None
    bootable: bool = True


class ImageStoreView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    zone_id: UUID
    state: str
    url: str
    protocol: str


class SnapshotView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    volume_id: UUID
    state: str


class NicView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    vm_id: UUID
    network_id: UUID
    address: str
    mac: str
    device_id: int
    state: str


class NetworkView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    cidr: str
    gateway: str
    isolation: str
    tag: int | None = None
    zone_id: UUID | None = None
    purpose: str = "isolated"
    # Its virtual router's address (the guests' default route) and source
    # NAT address, when it has one.
    router_address: str | None = None
    source_nat_ip_id: UUID | None = None
    source_nat_ip: str | None = None
    state: str


class IpView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    network_id: UUID
    address: str
    state: str


class RuleView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    version: int
    network_id: UUID
    kind: str
    protocol: str
    state: str
    source_cidr: str | None = None
    start_port: int | None = None
    end_port: int | None = None
    public_ip_id: UUID | None = None
    private_ip: str | None = None
    private_port: int | None = None
    private_end_port: int | None = None


def view(cls: type[T], row: asyncpg.Record) -> T:
    """A read model's row as the view its users read."""
    fields: dict[str, Any] = msgspec.json.decode(row["data"])
    fields["id"], fields["version"] = row["id"], row["version"]
    return msgspec.convert(fields, cls)


class ReadModels:
    def __init__(
        self, pool: asyncpg.Pool, schema: str, *, wait_s: float = 10.0, interval_s: float = 0.005
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.wait_s = wait_s
        self.interval_s = interval_s

    def table(self, aggregate_type: str) -> str:
        return read_model(self.schema, aggregate_type)

    async def get(
        self, cls: type[T], aggregate_type: str, aggregate_id: UUID, at_least: int = 0
    ) -> T | None:
        """The row of one aggregate once it reflects version `at_least`."""
        query = f"SELECT id, version, data FROM {self.table(aggregate_type)} WHERE id = $1"
        deadline = time.monotonic() + self.wait_s
        while True:
            row = await self.pool.fetchrow(query, aggregate_id)
            if row is not None and row["version"] >= at_least:
                return view(cls, row)
            if at_least == 0 and row is None:
                return None
            if time.monotonic() >= deadline:
                seen = None if row is None else row["version"]
                raise NotProjectedYet(
                    f"read model {aggregate_type} {aggregate_id} is at version {seen},"
                    f" waiting for {at_least}"
                )
            await asyncio.sleep(self.interval_s)

    def where_sql(self, aggregate_type: str, field: str, *, many: bool = False) -> str:
        """The key is in the text, not a parameter: a generic plan for
        data ->> $1 cannot use the index on data ->> 'vm_id', and a lookup
        that scans its table costs as much as the table has rows."""
        if field not in readmodel.indexed_keys(aggregate_type):
            raise ValueError(f"read model {aggregate_type} has no index on {field}")
        return (
            f"SELECT id, version, data FROM {self.table(aggregate_type)}"
            f" WHERE {readmodel.key_sql(field)} = {'ANY($1)' if many else '$1'}"
        )

    async def where(self, cls: type[T], aggregate_type: str, field: str, value: UUID) -> list[T]:
        """Rows whose `field` is value (e.g. the volumes of a VM)."""
        key = readmodel.key_value(field, value)
        rows = await self.pool.fetch(self.where_sql(aggregate_type, field), key)
        # In id order, sorted here: ORDER BY id may walk the key's index.
        return [view(cls, r) for r in sorted(rows, key=lambda r: r["id"])]

    async def where_in(
        self, cls: type[T], aggregate_type: str, field: str, values: Sequence[UUID]
    ) -> list[T]:
        """Rows whose `field` is any of values (e.g. the volumes of a host's
        VMs), in one query; = ANY walks the same index as where()."""
        if not values:
            return []
        rows = await self.pool.fetch(
            self.where_sql(aggregate_type, field, many=True),
            [readmodel.key_value(field, v) for v in values],
        )
        return [view(cls, r) for r in sorted(rows, key=lambda r: r["id"])]

    async def hosts(self, zones: frozenset[UUID] | None) -> list[HostView]:
        rows = await self.pool.fetch(f"SELECT id, version, data FROM {self.table('host')}")
        hosts = [view(HostView, r) for r in rows]
        return [h for h in hosts if zones is None or h.zone_id in zones]
