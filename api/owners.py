"""Which type a resource is and which account owns it, from the event log.

The ACL on commands cannot use the read models: a resource created a
moment ago may not be projected yet, and a missing row would look like
"not found". The log is never behind, and a resource's type and account
never change after its first event, so one indexed read of version 1 (and
of its parent's, for a NIC, IP address, rule or snapshot) settles it for
good and is remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID

import asyncpg
import msgspec

from cloud_engine.api.resources import BY_TYPE
from cloud_engine.bus.naming import event_type_of
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.infra.tables import events_table

REMEMBERED = 200_000


class Owner(msgspec.Struct, frozen=True):
    type: str  # public aggregate name: "vm"
    account: str | None  # None: fabric and catalog resources belong to no account
    # A network's purpose: every account takes public IPs from a public
    # network and puts VMs on a shared one.
    purpose: str | None = None

    @property
    def public(self) -> bool:
        return self.purpose == "public"


class Owners:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._events = events_table(schema)
        self._mapper = MsgspecMapper()
        self._known: OrderedDict[UUID, Owner] = OrderedDict()

    async def of(self, resource_id: UUID) -> Owner | None:
        """The owner, or None when the log has no such resource."""
        known = self._known.get(resource_id)
        if known is not None:
            return known
        row = await self._pool.fetchrow(
            f"SELECT topic, state FROM {self._events}"
            " WHERE originator_id = $1 AND originator_version = 1",
            resource_id,
        )
        if row is None:
            return None
        aggregate_type = event_type_of(row["topic"]).aggregate
        created = self._mapper.decode(resource_id, 1, row["topic"], bytes(row["state"]))
        account = getattr(created, "account", None)
        described = BY_TYPE.get(aggregate_type)
        if account is None and described is not None and described.parent is not None:
            parent_id = getattr(created, described.parent.field, None)
            parent = await self.of(parent_id) if isinstance(parent_id, UUID) else None
            account = None if parent is None else parent.account
            if account is None:
                # An orphan (its parent not in the log): nobody's but the
                # admins'; do not remember, the parent may still appear.
                return Owner(aggregate_type, None)
        owner = Owner(
            aggregate_type,
            account if isinstance(account, str) else None,
            purpose=getattr(created, "purpose", None),
        )
        self._known[resource_id] = owner
        if len(self._known) > REMEMBERED:
            self._known.popitem(last=False)
        return owner
