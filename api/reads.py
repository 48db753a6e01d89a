"""Read endpoints: a list, one resource, and its history, per collection.

Lists and single resources come from the read models. A resource the read
model does not have yet (created a moment ago, the projection not there
yet) is rebuilt from the log instead, so the Location a command answered
with never says 404 for something that exists. History always comes from
the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

import msgspec
import msgspec.inspect
from starlette.requests import Request
from starlette.responses import Response

from cloud_engine.api.auth import Principal, require_access, require_visible
from cloud_engine.api.codec import json_response
from cloud_engine.api.context import ApiContext, context_of, principal_of
from cloud_engine.api.cursor import Cursor, decode_cursor, encode_cursor, query_digest
from cloud_engine.api.problems import ApiError, bad_request, from_domain, invalid_query, not_found
from cloud_engine.api.queries import children_of, fetch_one, fetch_page
from cloud_engine.api.resources import (
    QUERY_TYPES,
    EventQuery,
    Filter,
    ResourceType,
    StateQuery,
    filter_values,
)
from cloud_engine.api.views import EventPage, Resource, ResourcePage
from cloud_engine.engine.aggregate import Aggregate
from cloud_engine.engine.catalog import PUBLIC_NAMES
from cloud_engine.engine.errors import DomainError, NotFound
from cloud_engine.projections.history import history, state_at, state_view

Handler = Callable[[Request], Awaitable[Response]]


Q = TypeVar("Q", bound=msgspec.Struct)


@functools.cache
def _integer_fields(kind: type[msgspec.Struct]) -> frozenset[str]:
    """The query parameters of `kind` that are integers."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    found = set()
    for field in info.fields:
        t = field.type
        if isinstance(t, msgspec.inspect.UnionType):  # an optional one: int | None
            t = next((x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)), t)
        while isinstance(t, msgspec.inspect.Metadata):
            t = t.type
        if isinstance(t, msgspec.inspect.IntType):
            found.add(field.encode_name)
    return frozenset(found)


def parse_query(request: Request, kind: type[Q]) -> Q:
    params = request.query_params
    known = {f.encode_name for f in msgspec.structs.fields(kind)}
    integers = _integer_fields(kind)
    values: dict[str, object] = {}
    for name, text in params.items():
        if len(params.getlist(name)) > 1:
            raise bad_request(f"query parameter {name} is given more than once", field=name)
        if name in known and not text:
            # Refused rather than read as "no filter": a script whose variable
            # came out empty (?vm_id=) would otherwise get every row instead
            # of an error. The document says minLength 1 for every parameter.
            raise ApiError(
                400,
                "invalid-query",
                f"query parameter {name} is empty: give it a value or leave it out",
                field=name,
            )
        values[name] = text
        if name in integers:
            # A query value is text: its integer is read leniently ("5", and
            # "5.0" as a JSON body's 5.0 is), the rest stays text so the strict
            # conversion below names the parameter in its error.
            with contextlib.suppress(msgspec.ValidationError):
                values[name] = msgspec.convert(text, int, strict=False)
    try:
        # Strict: msgspec's lax mode would also read "null" as no value, so
        # ?zone_id=null listed everything instead of being refused.
        return msgspec.convert(values, kind, strict=True)
    except msgspec.ValidationError as error:
        raise invalid_query(error) from None


def list_endpoint(resource: ResourceType) -> Handler:
    async def handle(request: Request) -> Response:
        ctx = context_of(request)
        principal = await principal_of(request)
        require_access(principal, resource.access, write=False)
        query = parse_query(request, QUERY_TYPES[resource.type])
        filters = filter_values(resource, query)
        digest = query_digest([(f.name, value) for f, value in filters])
        after = None if query.cursor is None else decode_cursor(query.cursor, digest)
        if resource.owned and not principal.is_admin:
            asked = [v for f, v in filters if f.name == "account"]
            if asked and asked[0] != principal.account:
                # Another account's resources do not exist for a user.
                return json_response(ResourcePage(items=[], next_cursor=None))
            filters = [(f, v) for f, v in filters if f.name != "account"]
            filters.append((Filter("account", "text", "account"), principal.account))
        page = await fetch_page(
            ctx.pool, ctx.schema, resource, filters, after=after, limit=query.limit
        )
        cursor = None
        if page.last is not None:
            cursor = encode_cursor(Cursor(page.last[0], page.last[1], digest))
        return json_response(ResourcePage(items=page.items, next_cursor=cursor))

    handle.__name__ = f"list_{resource.type}"
    return handle


def get_endpoint(resource: ResourceType) -> Handler:
    async def handle(request: Request) -> Response:
        ctx = context_of(request)
        principal = await principal_of(request)
        require_access(principal, resource.access, write=False)
        resource_id: UUID = request.path_params["id"]
        found = await fetch_one(ctx.pool, ctx.schema, resource, resource_id)
        if found is None:
            found = await from_log(ctx, resource, resource_id)
        await require_owner(ctx, principal, resource, resource_id, found.account)
        return json_response(found)

    handle.__name__ = f"get_{resource.type}"
    return handle


async def _readable(request: Request, resource: ResourceType) -> tuple[ApiContext, UUID]:
    """The context and the path's resource id, once the caller may read its
    log: an id of another type, or of an account the caller does not see,
    is not found."""
    ctx = context_of(request)
    principal = await principal_of(request)
    require_access(principal, resource.access, write=False)
    resource_id: UUID = request.path_params["id"]
    owner = await ctx.owners.of(resource_id)
    if owner is None or owner.type != resource.type:
        raise not_found(f"{resource.title} {resource_id} not found")
    require_visible(principal, resource.access, owner.account, f"{resource.title} {resource_id}")
    return ctx, resource_id


def events_endpoint(resource: ResourceType) -> Handler:
    async def handle(request: Request) -> Response:
        ctx, resource_id = await _readable(request, resource)
        query = parse_query(request, EventQuery)
        try:
            # One more than asked: whether there is a next page.
            entries = await asyncio.to_thread(
                history,
                ctx.store,
                resource_id,
                after_version=query.after_version,
                limit=query.limit + 1,
            )
        except DomainError as error:
            raise from_domain(error) from None
        more = len(entries) > query.limit
        entries = entries[: query.limit]
        following = entries[-1].version if more else None
        return json_response(EventPage(items=entries, next_after_version=following))

    handle.__name__ = f"events_{resource.type}"
    return handle


def state_endpoint(resource: ResourceType) -> Handler:
    async def handle(request: Request) -> Response:
        ctx, resource_id = await _readable(request, resource)
        query = parse_query(request, StateQuery)
        try:
            aggregate = await asyncio.to_thread(_state, ctx, resource_id, query)
        except DomainError as error:
            raise from_domain(error) from None
        return json_response(state_view(aggregate))

    handle.__name__ = f"state_{resource.type}"
    return handle


def _state(ctx: ApiContext, resource_id: UUID, query: StateQuery) -> Aggregate:
    """Neither: now. Both: the earlier of the two states."""
    if query.at is None:
        if query.version is None:
            aggregate = ctx.store.load(resource_id)
            if aggregate is None:
                raise NotFound(f"{resource_id} not found")
            return aggregate
        return state_at(ctx.store, resource_id, version=query.version)
    aggregate = state_at(ctx.store, resource_id, at=query.at)
    if query.version is not None and query.version < aggregate.version:
        aggregate = state_at(ctx.store, resource_id, version=query.version)
    return aggregate


async def require_owner(
    ctx: ApiContext,
    principal: Principal,
    resource: ResourceType,
    resource_id: UUID,
    account: str | None,
) -> None:
    if resource.owned and not principal.is_admin and account is None:
        # Its parent is not projected yet: ask the log.
        owner = await ctx.owners.of(resource_id)
        account = None if owner is None else owner.account
    require_visible(principal, resource.access, account, f"{resource.title} {resource_id}")


async def from_log(ctx: ApiContext, resource: ResourceType, resource_id: UUID) -> Resource:
    aggregate = await asyncio.to_thread(ctx.store.load, resource_id)
    if aggregate is None or PUBLIC_NAMES.get(type(aggregate)) != resource.type:
        raise not_found(f"{resource.title} {resource_id} not found")
    view = state_view(aggregate)
    account = getattr(aggregate, "account", None)
    if account is None and resource.parent is not None:
        owner = await ctx.owners.of(resource_id)
        account = None if owner is None else owner.account
    zone = getattr(aggregate, "zone_id", None)
    attributes = view.attributes
    children = await children_of(ctx.pool, ctx.schema, resource, resource_id)
    if children:
        merged = msgspec.json.decode(attributes) | children
        attributes = msgspec.Raw(msgspec.json.encode(merged))
    return Resource(
        id=view.id,
        type=view.type,
        version=view.version,
        position=None,
        state=_text(getattr(aggregate, "state", None)),
        name=_text(getattr(aggregate, "name", None)),
        account=_text(account),
        zone_id=zone if isinstance(zone, UUID) else None,
        created_on=view.created_on,
        modified_on=view.modified_on,
        attributes=attributes,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)
