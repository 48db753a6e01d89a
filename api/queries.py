"""Reads from the read models (rm_<type>, kept by the projection worker).

Queries are built from the resource table (api/resources.py), never from
request text: parameters are always bound, and the only identifiers put
into SQL come from that table. Resources owned through a parent (a NIC
through its VM) join the parent's row for the account.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from cloud_engine.api.cursor import Cursor
from cloud_engine.api.resources import Child, Filter, ResourceType
from cloud_engine.api.views import Resource
from cloud_engine.infra.tables import table_name

_COLUMNS = (
    "t.id, t.version, t.position, t.state, t.name, {account} AS account, t.zone_id,"
    " t.created_on, t.modified_on, {data}::text AS data"
)


def _child_list(schema: str, child: Child, parent_id: str) -> str:
    """A JSON array of the child rows of one parent, oldest first: one
    index range scan on the child's (field, created_on, id) index."""
    entry = ", ".join(["'id', c.id", *(f"'{name}', c.data -> '{name}'" for name in child.shown)])
    hidden = "".join(f" AND c.state <> '{state}'" for state in child.hidden_states)
    return (
        f"(SELECT coalesce(jsonb_agg(jsonb_build_object({entry})"
        " ORDER BY c.created_on, c.id), '[]'::jsonb)"
        f' FROM "{schema}".{table_name(child.type)} c'
        f" WHERE c.data ->> '{child.field}' = {parent_id}::text{hidden})"
    )


def _children(schema: str, resource: ResourceType, parent_id: str) -> str:
    """jsonb_build_object of every child list of the parent `parent_id`."""
    pairs = ", ".join(
        f"'{child.attribute}', {_child_list(schema, child, parent_id)}"
        for child in resource.children
    )
    return f"jsonb_build_object({pairs})"


def _data(schema: str, resource: ResourceType) -> str:
    # The lists join the aggregate's own attributes (`||` on jsonb); their
    # names are chosen in resources.py not to be one of those.
    if not resource.children:
        return "t.data"
    return f"(t.data || {_children(schema, resource, 't.id')})"


def _select(schema: str, resource: ResourceType, account: str) -> str:
    return _COLUMNS.format(account=account, data=_data(schema, resource))


class Page(msgspec.Struct, frozen=True):
    items: list[Resource]
    last: tuple[datetime, UUID] | None  # the key to continue after; None: no more rows


def _from(schema: str, resource: ResourceType) -> tuple[str, str]:
    """(FROM clause, expression of the owning account)."""
    table = f'"{schema}".{table_name(resource.type)} t'
    if resource.parent is None:
        return table, "t.account"
    parent = f'"{schema}".{table_name(resource.parent.type)}'
    join = f" LEFT JOIN {parent} p ON p.id = (t.data ->> '{resource.parent.field}')::uuid"
    return table + join, "coalesce(t.account, p.account)"


def _condition(f: Filter, account: str, index: int) -> str:
    if f.name == "account":
        return f"{account} = ${index}"
    if f.column is not None:
        return f"t.{f.column} = ${index}"
    # UUIDs are stored in data as their canonical text, so compare as text
    # (the parameter is a parsed UUID turned back into that text).
    return f"t.data ->> '{f.name}' = ${index}"


def _row(resource: ResourceType, r: asyncpg.Record) -> Resource:
    return Resource(
        id=r["id"],
        type=resource.type,
        version=r["version"],
        position=r["position"],
        state=r["state"],
        name=r["name"],
        account=r["account"],
        zone_id=r["zone_id"],
        created_on=r["created_on"],
        modified_on=r["modified_on"],
        attributes=msgspec.Raw(r["data"].encode()),
    )


async def fetch_one(
    pool: asyncpg.Pool, schema: str, resource: ResourceType, resource_id: UUID
) -> Resource | None:
    source, account = _from(schema, resource)
    row = await pool.fetchrow(
        f"SELECT {_select(schema, resource, account)} FROM {source} WHERE t.id = $1", resource_id
    )
    return None if row is None else _row(resource, row)


async def fetch_page(
    pool: asyncpg.Pool,
    schema: str,
    resource: ResourceType,
    filters: list[tuple[Filter, object]],
    *,
    after: Cursor | None,
    limit: int,
) -> Page:
    """One page in (created_on, id) order; the caller puts the account
    filter in `filters` for users."""
    source, account = _from(schema, resource)
    where: list[str] = []
    args: list[object] = []
    for f, value in filters:
        args.append(str(value) if f.kind == "uuid" and f.column is None else value)
        where.append(_condition(f, account, len(args)))
    if after is not None:
        args += [after.created_on, after.id]
        where.append(f"(t.created_on, t.id) > (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)  # one more tells whether another page follows
    sql = (
        f"SELECT {_select(schema, resource, account)} FROM {source}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY t.created_on, t.id LIMIT ${len(args)}"
    )
    rows = await pool.fetch(sql, *args)
    items = [_row(resource, r) for r in rows[:limit]]
    more = len(rows) > limit
    last = (items[-1].created_on, items[-1].id) if more and items else None
    return Page(items, last)


async def children_of(
    pool: asyncpg.Pool, schema: str, resource: ResourceType, resource_id: UUID
) -> dict[str, object]:
    """The child lists of one resource read from the log rather than its
    row (not projected yet): the children's rows may be there already."""
    if not resource.children:
        return {}
    found = await pool.fetchval(
        f"SELECT {_children(schema, resource, '$1::uuid')}::text", resource_id
    )
    decoded = msgspec.json.decode(found) if isinstance(found, str) else {}
    return decoded if isinstance(decoded, dict) else {}


async def public_network_of(pool: asyncpg.Pool, schema: str, zone_id: UUID) -> UUID | None:
    """The zone's public network (its oldest, should there be several)."""
    found = await pool.fetchval(
        f'SELECT id FROM "{schema}".{table_name("network")}'
        " WHERE zone_id = $1 AND state <> 'Destroyed' AND data ->> 'purpose' = 'public'"
        " ORDER BY created_on, id LIMIT 1",
        zone_id,
    )
    return found if isinstance(found, UUID) else None


async def first_physical_network(
    pool: asyncpg.Pool, schema: str, zone_id: UUID, isolation: str
) -> UUID | None:
    """The zone's oldest enabled physical network with this isolation."""
    found = await pool.fetchval(
        f'SELECT id FROM "{schema}".{table_name("physical_network")}'
        " WHERE zone_id = $1 AND state = 'Enabled' AND data ->> 'isolation' = $2"
        " ORDER BY created_on, id LIMIT 1",
        zone_id,
        isolation,
    )
    return found if isinstance(found, UUID) else None
